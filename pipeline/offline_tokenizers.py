"""Tokenizers for the embedded SD3, built offline and deterministically.

The `tokenizers` library's BpeTrainer breaks frequency ties differently from one process to the
next, so a model rebuilt from scratch would encode the same prompt to other ids and draw another
image. The small trainer here breaks ties by the pair itself, so every build is byte-identical.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from transformers import CLIPTokenizer, T5TokenizerFast

# Prompt-like English text: enough words that common prompts split into real subwords.
CORPUS = """
a photo of a cat holding a sign that says hello world
a photograph of an astronaut riding a horse on the moon
a painting of a fox sitting in a field at sunrise, oil on canvas
a cute dog wearing a red hat, studio lighting, highly detailed
an illustration of a castle on a hill under a starry night sky
portrait of an old man with a beard, dramatic light, black and white
a bowl of fruit on a wooden table, still life, soft shadows
a futuristic city skyline at night with neon lights and flying cars
a watercolor of a small boat on a calm lake surrounded by mountains
a close up of a flower with water drops, macro photography
a robot reading a book in a library, digital art, trending
the quick brown fox jumps over the lazy dog
a man and a woman walking on the beach at sunset
a bird flying over the ocean, wide angle, cinematic
a plate of food with rice and vegetables, top view
a red car parked in front of a house on a sunny day
text that says stable diffusion three, typography, poster
blurry, low quality, bad anatomy, worst quality, deformed, ugly
a forest with tall trees and a river running through it in autumn
a snowy mountain landscape with a clear blue sky and clouds
"""

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
_CLIP_WORD = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte maps to a printable unicode character."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def _clip_words(text: str) -> Counter:
    byte_map = bytes_to_unicode()
    words: Counter = Counter()
    for word in _CLIP_WORD.findall(text.lower()):
        words["".join(byte_map[b] for b in word.encode("utf-8"))] += 1
    return words


def train_bpe(corpus: str, num_merges: int) -> list[tuple[str, str]]:
    """Learn CLIP-style BPE merges; ties go to the lexicographically smallest pair."""
    words = {tuple(w[:-1]) + (w[-1] + "</w>",): n for w, n in _clip_words(corpus).items()}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for symbols, n in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        merged = best[0] + best[1]
        new_words = {}
        for symbols, n in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + n
        words = new_words
    return merges


def build_clip_tokenizer(*, pad_token: str = CLIP_EOS, num_merges: int = 400) -> CLIPTokenizer:
    alphabet = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in alphabet + [c + "</w>" for c in alphabet]:
        vocab[token] = len(vocab)
    merges = train_bpe(CORPUS, num_merges)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for special in (CLIP_BOS, CLIP_EOS):
        vocab[special] = len(vocab)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=CLIP_EOS,
        bos_token=CLIP_BOS,
        eos_token=CLIP_EOS,
        pad_token=pad_token,
        model_max_length=77,
    )


def build_t5_tokenizer() -> T5TokenizerFast:
    """A Unigram vocabulary: specials, single characters, then whole corpus words scored by frequency."""
    words = Counter(re.findall(r"[A-Za-z]+|[0-9]|[^\sA-Za-z0-9]", CORPUS))
    total = sum(words.values())
    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    chars = sorted({c for w in words for c in w} | set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    vocab += [(c, -10.0) for c in chars]
    vocab += [("\u2581" + c, -11.0) for c in chars]
    for word, n in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(word) > 1:
            vocab.append(("\u2581" + word, math.log(n / total)))
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)
