"""CLIP through open_clip (issue 20): a zero-shot classifier whose logits are open_clip's own cosine similarities
times the logit scale, explained by the transformer methods; weights files that do not fit are refused in words;
a ViT checkpoint of another patch or image size is named as such. Random weights, small configs; nothing
downloads."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch
from helpers import page_test
from PIL import Image

from explainers import CheckpointError, ModelUnavailableError, UserInputError, explain_many, load_model
from explainers.engine.trace import trace
from explainers.models import model_name
from explainers.runtime.attention import exposed_attention

TINY = "Protoscope-Tiny-CLIP"  # 32x32 images, 8x8-pixel patches: a 4x4 grid, 4 blocks, width 32
TINY_P16 = "Protoscope-Tiny-CLIP-P16"  # the same with 16x16-pixel patches: a 2x2 grid
CLASSES = ["cat", "dog", "car", "tree"]


def _config(patch: int) -> dict:
    return {"embed_dim": 24,
            "vision_cfg": {"image_size": 32, "layers": 4, "width": 32, "patch_size": patch, "head_width": 8},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2}}


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / f"{TINY}.json").write_text(json.dumps(_config(8)))
    (folder / f"{TINY_P16}.json").write_text(json.dumps(_config(16)))
    open_clip.add_model_config(folder)
    return folder


def _random_clip(arch: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    clip = open_clip.create_model(arch, pretrained=None).eval()
    with torch.no_grad():  # open_clip's init leaves some tensors at zero or one; random values test more
        for parameter in clip.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    return clip


@pytest.fixture(scope="module")
def weights(configs, tmp_path_factory):
    clip = _random_clip(TINY, 0)
    path = tmp_path_factory.mktemp("clip_weights") / "tiny_clip.pt"
    torch.save(clip.state_dict(), path)
    return path, clip


@pytest.fixture(scope="module")
def model(weights):
    return load_model(f"open_clip:{TINY}@{weights[0]}", classes=CLASSES, device="cpu")


def test_zero_shot_logits_are_open_clips_cosine_similarities_times_the_logit_scale(weights, model):
    path, clip = weights
    torch.manual_seed(1)
    x = torch.randn(3, 3, 32, 32)
    tokens = open_clip.get_tokenizer(TINY)([f"a photo of a {name}." for name in CLASSES])
    with torch.no_grad():
        image = clip.encode_image(x, normalize=True)
        text = clip.encode_text(tokens, normalize=True)
        expected = clip.logit_scale.exp() * image @ text.T
        got = model.net(x)
    assert torch.allclose(got, expected, atol=1e-4)
    assert expected.std() > 0.1  # the classes do differ: the check could fail
    assert isinstance(model.classifier, torch.nn.Linear) and model.classifier is model.net.head
    assert model.classes == CLASSES and model.family == "open_clip"
    assert model.block_paths["B4"] == "visual.ln_post" and model.block_shapes["B4"] == (32, 4, 4)
    # weights= names the same file; classes typed with spaces and a custom prompt change the head
    same = load_model(f"open_clip:{TINY}", weights=str(path), classes=CLASSES, device="cpu")
    assert same.fingerprint == model.fingerprint
    from explainers.models.clip import open_clip_model
    other = open_clip_model(TINY, path, [" cat", "dog "], prompt="a drawing of a {class}")
    assert other.classes == ["cat", "dog"] and other.fingerprint != model.fingerprint


def test_the_zero_shot_head_of_a_weights_file_is_kept_for_the_next_start(weights, model, tmp_path, monkeypatch):
    """The head is computed once per weights file, prompt and classes, and read back at the next load (the text
    tower is not run again: it is made to fail here); another file, or the same file rewritten, computes anew."""
    import explainers.models.clip as clip_module

    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path / "cache"))
    path = weights[0]
    first = clip_module.open_clip_model(TINY, path, CLASSES)
    assert len(list((tmp_path / "cache" / clip_module.HEADS_KIND).glob("*.npz"))) == 1

    def refused(*_):
        raise AssertionError("the text tower ran although the head was kept")

    monkeypatch.setattr(clip_module, "text_embeddings", refused)
    again = clip_module.open_clip_model(TINY, path, CLASSES)
    assert torch.equal(again.net.head.weight, first.net.head.weight)
    assert torch.equal(again.net.head.bias, first.net.head.bias)
    assert torch.allclose(again.net.head.weight, model.net.head.weight)
    with pytest.raises(AssertionError, match="the text tower ran"):  # other classes: not kept yet
        clip_module.open_clip_model(TINY, path, CLASSES[:2])
    copy = tmp_path / "copy.pt"
    copy.write_bytes(path.read_bytes())
    with pytest.raises(AssertionError, match="the text tower ran"):  # another file
        clip_module.open_clip_model(TINY, copy, CLASSES)


def test_preprocessing_is_open_clips_own(model):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    theirs = image_transform_v2(PreprocessCfg(**model.net.visual.preprocess_cfg), is_train=False)
    image = Image.fromarray(torch.randint(0, 255, (45, 70, 3), dtype=torch.uint8).numpy())
    assert torch.allclose(model.transform(image), theirs(image), atol=1e-5)


def test_transformer_methods_run_and_attention_leaves_logits_unchanged(model):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model.net(x)
        with exposed_attention() as maps:
            exposed = model.net(x)
    assert torch.allclose(plain, exposed, atol=1e-5)
    assert len(maps) == 4 and maps[0].weights.shape == (2, 4, 17, 17)  # heads 4, class token + 4x4 patches
    for block in ("B2", "B4"):
        found = explain_many(model, x[0], ["gradcam", "legrad", "rollout", "chefer"], block=block)
        for name, explanation in found.items():
            assert explanation.raw.shape == (4, 4), name
            assert torch.isfinite(torch.from_numpy(explanation.raw)).all(), name
            # At B4 (ln_post) only the class token reaches the head: the patch tokens' gradient is zero there
            assert (explanation.raw.std() > 0) == (block == "B2" or name != "gradcam"), (block, name)
    # rollout ignores the class; Chefer's relevance does not
    a = explain_many(model, x[0], ["rollout", "chefer"], block="B4", target=0)
    b = explain_many(model, x[0], ["rollout", "chefer"], block="B4", target=1)
    assert (a["rollout"].raw == b["rollout"].raw).all()
    assert not (a["chefer"].raw == b["chefer"].raw).all()
    shared = trace(model, x[:1], gradients=True, blocks=["B4"], attention=("layers",))
    assert shared.attention.layer_backwards == 4


def test_cam_is_refused_with_the_reason(model):
    from explainers import MethodUnavailableError

    with pytest.raises(MethodUnavailableError, match="global-average-pooling"):
        explain_many(model, torch.randn(3, 32, 32), ["cam"], block="B4")


def test_weights_of_another_architecture_are_named(configs, tmp_path):
    path = tmp_path / "p16.pt"
    torch.save(_random_clip(TINY_P16, 3).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"16x16-pixel patches, this architecture into 8x8") as caught:
        load_model(f"open_clip:{TINY}@{path}", classes=CLASSES)
    assert "position embedding holds 5 tokens (a 2x2 grid plus 1 prefix token)" in str(caught.value)
    assert "visual.conv1.weight" in str(caught.value)
    pickled = tmp_path / "code.pt"
    torch.save({"state_dict": object()}, pickled)
    with pytest.raises(CheckpointError, match="could not be read"):
        load_model(f"open_clip:{TINY}", weights=str(pickled))
    with pytest.raises(CheckpointError, match="not found"):
        load_model(f"open_clip:{TINY}@{tmp_path / 'missing.bin'}")


def test_bad_names_classes_and_default_weights_are_refused(configs):
    with pytest.raises(ModelUnavailableError, match="needs a weights file"):
        load_model(f"open_clip:{TINY}")  # weights="DEFAULT": never downloaded
    with pytest.raises(UserInputError, match="unknown open_clip architecture"):
        load_model("open_clip:ViT-Q-99", weights=None)
    with pytest.raises(UserInputError, match="ResNet or a timm model"):
        load_model("open_clip:RN50", weights=None)
    with pytest.raises(UserInputError, match="given twice"):
        load_model(f"open_clip:{TINY}", weights=None, classes=["cat", "cat"])
    with pytest.raises(UserInputError, match="no zero-shot classes"):
        load_model(f"open_clip:{TINY}", weights=None, classes=[" ", ""])
    assert model_name(" open_clip:ViT-B-32@/data/clip/open_clip_model.safetensors ") == \
        "open_clip:ViT-B-32@/data/clip/open_clip_model.safetensors"
    with pytest.raises(UserInputError, match="not an open_clip model"):
        model_name("open_clip:ViT B 32")


def test_a_vit_checkpoint_of_another_patch_size_says_so(tmp_path):
    """Issue 20, item 4: a timm ViT state dict with 16x16 patches loaded as digits_vit (8x8 patches)."""
    from timm.models.vision_transformer import VisionTransformer

    from explainers.models.builtin.digits_vit import DIGITS_VIT_CONFIG

    net = VisionTransformer(**{**DIGITS_VIT_CONFIG, "patch_size": 16})
    path = tmp_path / "vit_p16.pt"
    torch.save({"state_dict": net.state_dict(), "arch": "digits_vit"}, path)
    with pytest.raises(CheckpointError) as caught:
        load_model(path)
    message = str(caught.value)
    assert "16x16-pixel patches, this architecture into 8x8" in message
    assert "16 tokens (a 4x4 grid) where this architecture has 64 (an 8x8 grid)" in message
    bigger = VisionTransformer(**{**DIGITS_VIT_CONFIG, "img_size": 96})  # 12x12 patches of 8 pixels
    torch.save(bigger.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"144 tokens \(a 12x12 grid\).*another image or patch size"):
        load_model(path, arch="digits_vit")


def test_vit_b_32_at_its_size(configs):
    """open_clip's own ViT-B-32 config (random weights): 224x224 input, a 7x7 grid, the class token read."""
    spec = load_model("open_clip:ViT-B-32", weights=None, classes=["cat", "dog"], device="cpu")
    assert spec.input_size == (224, 224) and spec.block_shapes["B4"] == (768, 7, 7)
    assert spec.transformer.readout == [0] and spec.transformer.heads == 12
    found = explain_many(spec, torch.randn(3, 224, 224), ["gradcam", "rollout"], block="B3")
    assert found["gradcam"].raw.shape == (7, 7)


def test_the_sidebar_takes_clip_with_typed_classes_and_keeps_them_in_the_url():


    app = page_test("pages/saliency.py", 240)
    for key, value in dict(model_name="open_clip:ViT-B-32", random_weights="1", clip_classes="cat, dog,teapot",
                           methods="gradcam,rollout,chefer", block="B3").items():
        app.query_params[key] = value
    app.run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    top = next(m.value for m in app.markdown if m.value.startswith("**Top-5 prediction**"))
    assert all(f"`{name}`" in top for name in ("cat", "dog", "teapot"))
    assert app.query_params["clip_classes"] in ("cat, dog,teapot", ["cat, dog,teapot"])
    app.checkbox(key="random_weights").uncheck().run()  # no weights file named: what to do, in the sidebar
    assert any("needs a weights file" in e.value for e in app.error)
