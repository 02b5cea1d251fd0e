"""mtlkit in other training frameworks, behind extras: :mod:`~mtlkit.integrations.lightning`
(PyTorch Lightning, extra ``lightning``) and :mod:`~mtlkit.integrations.hf` (the Hugging Face
``Trainer``, extra ``nlp``). Each module imports its framework when imported; this package
imports neither."""
