"""Token-tagging corpora: CoNLL-U and CoNLL-2003 readers, vocabularies, padded tensors.

One module per job:

- :mod:`~mtlkit.data.conll.readers`: the CoNLL-U and CoNLL-2003 readers (a list of
  :class:`Sentence`, each word with its file and line) and the BIO rule (``bio_rule``:
  ``repair`` rewrites an ``I-X`` that opens an entity as ``B-X``, ``reject`` raises);
- :mod:`~mtlkit.data.conll.vocab`: word and label vocabularies (id 0 = ``<pad>``,
  1 = ``<unk>``, 2 = ``<mask>``);
- :mod:`~mtlkit.data.conll.bundles`: padded ``(N, L)`` tensors, one tagging task per column,
  and the registered datasets ``conllu`` and ``conll2003``.
"""

from mtlkit.data.conll.bundles import (
    TextBundle,
    conll2003_dataset,
    conllu_dataset,
    encode_sentences,
    tagging_bundle,
)
from mtlkit.data.conll.readers import (
    CONLL2003_COLUMNS,
    Sentence,
    check_bio,
    parse_conll2003,
    parse_conllu,
    read_conll2003,
    read_conllu,
)
from mtlkit.data.conll.vocab import (
    MASK_ID,
    PAD_ID,
    UNK_ID,
    Vocabulary,
    label_vocabulary,
    word_vocabulary,
)

__all__ = [
    "CONLL2003_COLUMNS",
    "MASK_ID",
    "PAD_ID",
    "UNK_ID",
    "Sentence",
    "TextBundle",
    "Vocabulary",
    "check_bio",
    "conll2003_dataset",
    "conllu_dataset",
    "encode_sentences",
    "label_vocabulary",
    "parse_conll2003",
    "parse_conllu",
    "read_conll2003",
    "read_conllu",
    "tagging_bundle",
    "word_vocabulary",
]
