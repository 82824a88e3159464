"""Tiny offline models for tests and the demo: a small BPE tokenizer trained on the spot, no downloads.

`offline_tokenizer(special_tokens)` trains a byte-level BPE of a few hundred tokens on an English corpus built
from the words SynthRooms and the benchmark prompts use, and wraps it as a `PreTrainedTokenizerFast` with the
family's special tokens (chat markers, image placeholders) as single ids. Training takes well under a second.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Words the prompts, SynthRooms descriptions and answers are made of; the BPE learns them as single tokens.
BASE_CORPUS = """
the a an of to in on at is are it this that there what which how can where who many much one two three four five
six seven eight nine ten zero yes no left right front behind between closest farthest near next top under above
below beside facing standing sitting looking i am my me you your room object objects chair chairs table tables sofa
bed cabinet bookshelf desk lamp box plant tv monitor window door wall floor red green blue yellow white black brown
grey orange purple small large big tall short wide colour color size bigger smaller identify describe answer
question questions following description located given detail simply single word phrase video captures 3d spatial
information scene please focus relationships and with for from by as be has have not only or located corresponding
there may be more you are a helpful assistant user assistant system image frame frames
""".split()


def offline_tokenizer(special_tokens: Iterable[str], vocab_size: int = 384, extra_corpus: Iterable[str] = (),
                      eos_token: str | None = None, pad_token: str | None = None) -> PreTrainedTokenizerFast:
    """Train a tiny byte-level BPE tokenizer offline.

    special_tokens: tokens that must stay single ids (chat markers, image pads, `<ground>` ...), added first so
        their ids are small and stable.
    vocab_size: total vocabulary size including the 256 byte symbols and the special tokens.
    extra_corpus: more text to learn merges from (e.g. SynthRooms descriptions).
    eos_token / pad_token: which of the special tokens play these roles (pad defaults to eos).
    """
    specials = list(dict.fromkeys(special_tokens))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [" ".join(BASE_CORPUS)] * 4 + [" " + w for w in BASE_CORPUS] + list(extra_corpus)
    tok.train_from_iterator(corpus, trainer=trainer)
    pad = pad_token or eos_token
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token, pad_token=pad,
                                   additional_special_tokens=specials)
