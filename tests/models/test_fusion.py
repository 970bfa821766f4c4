"""Fusion models: shapes, masking, modality dropout, determinism, registry errors, fitting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ecmf.config import TrainConfig
from ecmf.models.fusion import MODELS, ECMFFusion, build_model, drop_modalities

DIMS = {"frames": 12, "audio": 10, "text": 8}
NAMES = MODELS.names()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def batch(b: int = 6, seed: int = 1) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    feats = {m: torch.randn(b, d, generator=g) for m, d in DIMS.items()}
    masks = {m: torch.ones(b, dtype=torch.bool) for m in DIMS}
    return feats, masks


def make(name: str, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return MODELS.get(name)(DIMS, 6, **{"hidden": 32, "heads": 4, **kw})


def test_all_three_models_are_registered():
    assert set(NAMES) == {"ecmf", "mertools-attention", "concat-mlp"}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("layers", [1, 2])
def test_logits_shape(name, layers):
    model = make(name, layers=layers).eval()
    feats, masks = batch(5)
    out = model(feats, masks)
    assert out.shape == (5, 6)
    assert torch.isfinite(out).all()
    assert model(feats).shape == (5, 6)  # masks=None: everything present


@pytest.mark.parametrize("name", NAMES)
def test_missing_modality_cannot_change_the_output(name):
    model = make(name).eval()
    feats, masks = batch()
    masks["audio"][0] = False
    masks["text"][2] = False
    feats["audio"][0] = 0.0
    feats["text"][2] = 0.0
    with torch.no_grad():
        ref = model(feats, masks)
        changed = {m: x.clone() for m, x in feats.items()}
        changed["audio"][0] = torch.randn(DIMS["audio"]) * 50
        changed["text"][2] = torch.full((DIMS["text"],), 7.0)
        out = model(changed, masks)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def branch_parameters(model, i: int) -> list[torch.nn.Parameter]:
    if isinstance(model, ECMFFusion):
        return [*model.proj[i].parameters(), model.modality_embedding]
    return list(model.encoders[i].parameters())


@pytest.mark.parametrize("name", ["ecmf", "mertools-attention"])
def test_missing_modality_token_is_excluded_entirely(name):
    # Zeroed features alone would make a missing token constant, not absent: perturbing that
    # modality's own branch shows it is out of the attention keys, the pooling and the weights.
    model = make(name).eval()
    feats, masks = batch()
    i = 1
    masks["audio"][:3] = False
    with torch.no_grad():
        ref = model(feats, masks)
        for p in branch_parameters(model, i):
            if p is getattr(model, "modality_embedding", None):
                p[i] += torch.randn_like(p[i])
            else:
                p += torch.randn_like(p)
        out = model(feats, masks)
    torch.testing.assert_close(out[:3], ref[:3], rtol=0, atol=1e-5)
    assert ((out[3:] - ref[3:]).abs().amax(1) > 1e-4).all()


def test_ecmf_residual_path_keeps_each_modality_when_attention_is_silenced():
    model = make("ecmf").eval()
    with torch.no_grad():
        model.norm.weight.zero_()  # the attended tokens now contribute nothing
        model.norm.bias.zero_()
        feats, masks = batch()
        ref = model(feats, masks)
        for m in DIMS:
            changed = {**feats, m: feats[m] + torch.randn_like(feats[m])}
            assert ((model(changed, masks) - ref).abs().amax(1) > 1e-4).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("modality", list(DIMS))
def test_present_modality_changes_the_output(name, modality):
    model = make(name).eval()
    feats, masks = batch()
    masks["audio"][1] = False  # partly missing samples must still listen to what is present
    with torch.no_grad():
        ref = model(feats, masks)
        changed = {m: x.clone() for m, x in feats.items()}
        changed[modality] = changed[modality] + 3.0 * torch.randn_like(changed[modality])
        out = model(changed, masks)
    present = masks[modality]
    diff = (out - ref).abs().amax(1)
    assert (diff[present] > 1e-4).all()
    assert (diff[~present] < 1e-5).all()


@pytest.mark.parametrize("name", NAMES)
def test_sample_with_every_modality_missing_is_finite(name):
    model = make(name, modality_dropout=0.5)
    feats, masks = batch()
    for m in DIMS:
        masks[m][3] = False
    for train in (False, True):
        model.train(train)
        out = model(feats, masks)
        assert torch.isfinite(out).all()
        out.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.zero_grad()
    model.eval()
    with torch.no_grad():
        changed = {m: x.clone() for m, x in feats.items()}
        for m in DIMS:
            changed[m][3] = 100.0
        torch.testing.assert_close(model(changed, masks)[3], model(feats, masks)[3])


def test_drop_modalities_keeps_a_present_modality_and_never_adds_one():
    torch.manual_seed(0)
    mask = torch.rand(4000, 3) < 0.7
    mask[:10] = False  # nothing present: must stay so
    kept = drop_modalities(mask, 0.6)
    assert not (kept & ~mask).any()
    assert torch.equal(kept.any(1), mask.any(1))
    single = mask.sum(1) == 1
    assert torch.equal(kept[single], mask[single])  # a lone modality is never dropped
    full = mask.all(1)
    rate = 1 - kept[full].float().mean().item()
    assert 0.4 < rate < 0.6  # the rescue lowers the rate below p, but dropping is real
    assert torch.equal(drop_modalities(mask, 0.0), mask)


@pytest.mark.parametrize("name", NAMES)
def test_modality_dropout_only_in_train_mode(name):
    feats, masks = batch(64)
    model = make(name, dropout=0.0, modality_dropout=0.5)
    model.eval()
    torch.testing.assert_close(model(feats, masks), model(feats, masks))
    model.train()
    assert not torch.allclose(model(feats, masks), model(feats, masks))
    plain = make(name, dropout=0.0, modality_dropout=0.0).train()
    torch.testing.assert_close(plain(feats, masks), plain(feats, masks))


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_seed(name):
    a, b, c = make(name, seed=3), make(name, seed=3), make(name, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    feats, masks = batch()
    torch.manual_seed(9)
    out_a = a.train()(feats, masks)
    torch.manual_seed(9)
    out_b = b.train()(feats, masks)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(KeyError) as err:
        MODELS.get("tfn")
    for name in NAMES:
        assert name in str(err.value)
    with pytest.raises(KeyError, match="available"):
        build_model(TrainConfig(model="nope"), DIMS, 6)


def test_build_model_from_config():
    cfg = TrainConfig(model="ecmf", hidden=16, heads=2, layers=2, modality_dropout=0.2)
    model = build_model(cfg, DIMS, 6)
    assert len(model.blocks) == 2 and model.modality_dropout == 0.2
    assert model.modalities == list(DIMS)


def test_bad_inputs_name_the_modality():
    model = make("ecmf")
    feats, masks = batch()
    with pytest.raises(KeyError, match="text"):
        model({m: x for m, x in feats.items() if m != "text"}, masks)
    with pytest.raises(ValueError, match="audio"):
        model({**feats, "audio": torch.zeros(6, 3)}, masks)
    with pytest.raises(ValueError, match="multiple of heads"):
        make("ecmf", hidden=30, heads=4)
    with pytest.raises(ValueError, match="modality_dropout"):
        make("concat-mlp", modality_dropout=1.0)


def separable_problem(n_per_class: int = 16, classes: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    feats = {m: torch.randn(classes, d, generator=g)[y] * 1.5 + 0.5 * torch.randn(len(y), d,
                                                                                 generator=g)
             for m, d in DIMS.items()}
    present = torch.rand(len(y), len(DIMS), generator=g) > 0.2
    present[~present.any(1), 0] = True
    masks = {m: present[:, i] for i, m in enumerate(DIMS)}
    for m in DIMS:
        feats[m][~masks[m]] = 0.0
    return feats, masks, y


@pytest.mark.parametrize("name", NAMES)
def test_fits_a_small_separable_problem(name):
    feats, masks, y = separable_problem()
    model = make(name, dropout=0.1, modality_dropout=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(200):
        loss = F.cross_entropy(model(feats, masks), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    with torch.no_grad():
        acc = (model(feats, masks).argmax(1) == y).float().mean().item()
    assert acc > 0.9
