"""Tiny randomly initialised CLIP vision, HuBERT and causal LM models saved with `save_pretrained`.

Tests and the laptop demo load them through the production `from_pretrained(path)` code path,
offline; production configs name hub ids instead.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
from pathlib import Path

# Bump when a builder changes what it writes, so `build_tiny_models` rebuilds stale directories.
_FORMAT = 1
_MARKER = "tiny_model.json"

# Roles of the tiny LM's chat template, each a special token so that decoding with
# `skip_special_tokens=True` drops them like a real instruct model's markers.
_SPECIAL_TOKENS = ["<unk>", "<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>",
                   "<|end|>"]
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# BPE merges come from this corpus; the content only shapes which sub-words exist.
_CORPUS = [
    "The speaker sounds tense and hurried, as if something has just gone wrong.",
    "Her voice is calm and even, but the words hint at a worry she does not say aloud.",
    "He raises his voice and cuts the other person off; the tone is sharp and impatient.",
    "A soft laugh follows the line, and the speaker seems relaxed and pleased.",
    "The words trail off, slow and quiet, as if the speaker is tired or disappointed.",
    "The pitch jumps on the last word: the news was clearly unexpected.",
    "Describe the emotional cues of this subtitle: the tone, the state and the context.",
    "Subtitle: I told you not to do that again! Visual description: a frowning face.",
    "Audio description: a shaky, low voice with long pauses between the words.",
    "她的语气很平静，但话里有一丝担心。他突然提高了声音，听起来很不耐烦。",
    "说话人笑着说出这句话，显得轻松愉快。字幕：你怎么现在才来？请描述情感线索。",
]


def _write_marker(out: Path, **info) -> None:
    (out / _MARKER).write_text(json.dumps({"format": _FORMAT, **info}, sort_keys=True))


def build_tiny_clip_vision(out: Path, image_size: int = 64, seed: int = 0) -> Path:
    """A 2-layer CLIP vision tower (hidden 128, 2x2 patches) and its image processor, in `out`.

    Few large patches: a random tower averages over patch tokens, and with many small patches
    that average washes out where things are in the frame (probed on the demo corpus: linear
    probe WAF 0.29 with 2x2 patches against 0.20 with 8x8).
    """
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    # The default CLIPImageProcessor backend needs torchvision, which fails beside CPU torch.
    from transformers.models.clip import CLIPImageProcessorPil

    if image_size < 16 or image_size % 2:
        raise ValueError(f"tiny CLIP image_size: expected an even number >= 16, got {image_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                              num_attention_heads=4, image_size=image_size,
                              patch_size=image_size // 2, projection_dim=128)
    CLIPVisionModel(config).save_pretrained(out)
    processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                      crop_size={"height": image_size, "width": image_size})
    processor.save_pretrained(out)
    _write_marker(out, kind="clip", seed=seed, image_size=image_size, patches=2)
    return out


def build_tiny_hubert(out: Path, seed: int = 0, norm: str = "group") -> Path:
    """A 4-layer HuBERT (hidden 64, the real conv strides: 320 samples a frame) and its
    feature extractor, saved in `out`. `norm` "layer": chinese-hubert-large's front end (layer
    norm per conv frame), which takes an attention mask, so batches of clips are padded."""
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    # Group-norm front end, like hubert-base: with random weights it keeps more of what tells
    # the demo's voices apart (linear-probe WAF 0.43 against 0.29 for the layer-norm variant of
    # chinese-hubert-large). Four layers at least: the audio feature sums the last four.
    if norm not in ("group", "layer"):
        raise ValueError(f"norm: expected 'group' or 'layer', got {norm!r}")
    layer = norm == "layer"
    config = HubertConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                          intermediate_size=128, conv_dim=(32,) * 7, conv_bias=layer,
                          conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
                          feat_extract_norm=norm, do_stable_layer_norm=layer,
                          num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    HubertModel(config).save_pretrained(out)
    # Group-norm models are fed without an attention mask, as hubert-base's extractor says.
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                             do_normalize=True, return_attention_mask=layer).save_pretrained(out)
    _write_marker(out, kind="hubert", seed=seed, norm=norm)
    return out


def _tiny_tokenizer():
    """A SentencePiece-style BPE trained on `_CORPUS`: deterministic, and every token decodes to
    real characters, so a random LM's greedy output still reads as (nonsense) text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    alphabet = [c for c in string.printable if not c.isspace()] + ["\n", "\u2581"]
    alphabet += sorted(set("".join(_CORPUS)) - set(alphabet))
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=_SPECIAL_TOKENS,
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<|endoftext|>",
        eos_token="<|endoftext|>", pad_token="<|pad|>",
        additional_special_tokens=_SPECIAL_TOKENS[3:], chat_template=_CHAT_TEMPLATE,
        model_max_length=4096)


def build_tiny_causal_lm(out: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 64) with an offline-built BPE tokenizer and a chat template,
    saved in `out` for AutoTokenizer / AutoModelForCausalLM."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _tiny_tokenizer()
    torch.manual_seed(seed)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    # initializer_range 0.2 rather than 0.02: with near-zero logits greedy decoding repeats
    # one token forever; larger weights give varied output that exercises the parsers.
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         initializer_range=0.2, **ids)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(do_sample=False, **ids)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _write_marker(out, kind="llm", seed=seed)
    return out


def _reusable(path: Path, **info) -> bool:
    """True when `path` holds a complete tiny model built with the same parameters."""
    try:
        marker = json.loads((path / _MARKER).read_text())
        if marker != {"format": _FORMAT, **info}:
            return False
        from transformers import AutoConfig

        AutoConfig.from_pretrained(path)
        return True
    except Exception:  # missing, half-written or unreadable: rebuild
        return False


def build_tiny_models(out: Path, seed: int = 0, image_size: int = 64) -> dict[str, str]:
    """Build (or reuse) `out/clip`, `out/hubert` and `out/llm`; returns {"clip": path, ...}.

    A directory is reused when its marker records the same seed (and image size) and its config
    loads; otherwise it is rebuilt in a temporary sibling and swapped in, so an interrupted build
    never leaves a half-written model behind.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    builders = {
        "clip": (lambda p: build_tiny_clip_vision(p, image_size=image_size, seed=seed),
                 dict(kind="clip", seed=seed, image_size=image_size, patches=2)),
        "hubert": (lambda p: build_tiny_hubert(p, seed=seed),
                   dict(kind="hubert", seed=seed, norm="group")),
        "llm": (lambda p: build_tiny_causal_lm(p, seed=seed), dict(kind="llm", seed=seed)),
    }
    paths = {}
    for name, (build, info) in builders.items():
        target = out / name
        if not _reusable(target, **info):
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out))
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide the model from other users
            try:
                build(tmp)
                if target.exists():
                    shutil.rmtree(target)
                try:
                    os.replace(tmp, target)
                except OSError:
                    # Another process swapped in its build first; keep it if it is complete.
                    if not _reusable(target, **info):
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        paths[name] = str(target)
    return paths
