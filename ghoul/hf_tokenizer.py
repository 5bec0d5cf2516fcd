"""The tokenizer files of a Hugging Face export, so that `AutoTokenizer.from_pretrained` gives ghoul's token ids:
GPT-2's own files, or an own byte-level BPE as GPT-2-style vocab.json and merges.txt plus a fast tokenizer.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ghoul.errors import GhoulError
from ghoul.files import write_json
from ghoul.tokenizer import Tokenizer, load_tokenizer
from ghoul.tokenizer.bpe import GPT4_PATTERN, BPETokenizer
from ghoul.tokenizer.gpt2 import EOT, GPT2_PATTERN, gpt2_file

if TYPE_CHECKING:
    import tokenizers

# ghoul's pre-split patterns as the `tokenizers` library's Split must read them. It runs Oniguruma (Ruby syntax),
# where `{1,3}+` repeats the `{1,3}` instead of making it possessive as Python's regex does; a plain `{1,3}` matches
# the same there, as nothing follows it in its alternative. tests/test_hf.py compares the splits on real text.
HF_PATTERNS = {GPT2_PATTERN: GPT2_PATTERN, GPT4_PATTERN: GPT4_PATTERN.replace(r"\p{N}{1,3}+", r"\p{N}{1,3}")}


def export_tokenizer(model_dir: Path, vocab_size: int) -> Tokenizer | None:
    """The model's tokenizer when Hugging Face has an exact equivalent (a one-line error when not), or None when
    it has more tokens than the model's `vocab_size` and so cannot be the model's (tiny test models)."""
    tok = load_tokenizer(model_dir)
    if isinstance(tok, BPETokenizer):
        if tok.pat_str not in HF_PATTERNS:
            raise GhoulError(f"{model_dir}: its BPE tokenizer's own pre-split pattern has no tested Hugging Face "
                             "equivalent; only the gpt2 and gpt4 patterns export")
        vocab, _ = tok.gpt2_vocab_and_merges()
        if len(vocab) < tok.vocab_size:
            raise GhoulError(f"{model_dir}: its BPE tokenizer has two tokens with the same bytes, and a Hugging Face "
                             "vocabulary holds each token once")
    elif tok.name != "gpt2":
        raise GhoulError(f"{model_dir}: a {tok.name} tokenizer has no Hugging Face equivalent; only byte-level BPE "
                         "tokenizers export (gpt2, or one made by `ghoul tokenizer train`)")
    return tok if tok.vocab_size <= vocab_size else None


# every file write_tokenizer_files may write (a GPT-2-pattern BPE all of them)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def write_tokenizer_files(tok: Tokenizer, directory: Path, max_length: int) -> None:
    """Write `tok`'s Hugging Face files into `directory`, <|endoftext|> as its bos, eos, unk and pad token."""
    if isinstance(tok, BPETokenizer):
        # a tokenizer.json loads as it is written; GPT2Tokenizer would rebuild GPT-2's split and lose a gpt4 pattern
        tokenizer_class = "PreTrainedTokenizerFast"
        fast_tokenizer(tok).save(str(directory / "tokenizer.json"))
        if tok.pat_str == GPT2_PATTERN:  # GPT2Tokenizer splits as GPT-2: these two files give the same ids too
            vocab, merges = tok.gpt2_vocab_and_merges()
            (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
            merges_txt = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
            (directory / "merges.txt").write_text(merges_txt, encoding="utf-8")
    else:  # GPT-2's own files
        tokenizer_class = "GPT2Tokenizer"
        shutil.copyfile(gpt2_file("encoder.json"), directory / "vocab.json")
        shutil.copyfile(gpt2_file("vocab.bpe"), directory / "merges.txt")
    specials = dict(bos_token=EOT, eos_token=EOT, unk_token=EOT, pad_token=EOT)
    config = {"tokenizer_class": tokenizer_class, **specials, "model_max_length": max_length, "add_bos_token": False,
              "add_prefix_space": False, "clean_up_tokenization_spaces": False, "errors": "replace"}
    write_json(directory / "tokenizer_config.json", config)
    write_json(directory / "special_tokens_map.json", specials)


def fast_tokenizer(tok: BPETokenizer) -> tokenizers.Tokenizer:
    """`tok` as a `tokenizers` BPE: ghoul's split, GPT-2's byte-to-character map, merges ranked in training order."""
    try:
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers  # extra ghoul[hf]
    except ImportError:
        raise GhoulError("exporting an own BPE tokenizer needs the tokenizers library: pip install 'ghoul[hf]'"
                         ) from None
    vocab, merges = tok.gpt2_vocab_and_merges()
    # applying the lowest-ranked pair first is ghoul's "merges in training order"; no shortcut for whole words
    fast = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False, ignore_merges=False))
    fast.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(HF_PATTERNS[tok.pat_str]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),  # bytes -> GPT-2's printable characters
    ])
    fast.decoder = decoders.ByteLevel()
    fast.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in tok.special_tokens])
    return fast
