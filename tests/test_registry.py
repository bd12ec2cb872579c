"""The one Registry class (issue 11, item 3): methods, models and datasets live in it, and it fits the
family adapters' needs (instances as entries, a catch-all that stays last, lookup by name)."""
from __future__ import annotations

import pytest

from explainers import UserInputError
from explainers.data.datasets import DATASETS
from explainers.methods import METHODS, Method, method_info, method_names
from explainers.models import MODELS
from explainers.runtime.registry import Registry, UnknownNameError


def test_methods_models_and_datasets_share_the_registry_class():
    for registry, kind in ((METHODS, "method"), (MODELS, "model"), (DATASETS, "dataset")):
        assert isinstance(registry, Registry) and registry.kind == kind
    assert list(METHODS) == method_names() and all(isinstance(m, Method) for m in METHODS.values())
    assert METHODS["gradcam"] is method_info("gradcam")
    assert METHODS.description("gradcam") == method_info("gradcam").description
    assert "digits" in MODELS and "digits" in DATASETS


def test_an_unknown_name_is_a_user_input_error_that_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="unknown method 'gradcm'; known: cam, gradcam, ") as raised:
        method_info("gradcm")
    assert isinstance(raised.value, UserInputError)
    assert "gradcm" not in METHODS and [1] not in METHODS and METHODS.get("gradcm") is None


class Adapter:
    def __init__(self, name: str, matches) -> None:
        self.name, self.matches = name, matches


def test_entries_are_any_object_and_a_catch_all_stays_last():
    """What explainers/families.py needs: one adapter instance per family, matched in registration
    order, with the generic adapter tried last even when others register after it."""
    adapters: Registry[Adapter] = Registry("model family")
    adapters.add("resnet", Adapter("resnet", lambda net: net == "resnet"), "torchvision ResNets")
    adapters.add("generic", Adapter("generic", lambda net: True), "any CNN", last=True)
    adapters.add("vgg", Adapter("vgg", lambda net: net == "vgg"), "VGG")
    adapters.add("densenet", Adapter("densenet", lambda net: net == "densenet"), "DenseNets")

    def family_for(net: str) -> str:
        return next(adapter for adapter in adapters.values() if adapter.matches(net)).name

    assert adapters.names() == ["resnet", "vgg", "densenet", "generic"]
    assert [family_for(net) for net in ("vgg", "densenet", "other")] == ["vgg", "densenet", "generic"]
    assert adapters.description("generic") == "any CNN" and adapters["densenet"].name == "densenet"
    with pytest.raises(ValueError, match="model family 'vgg' is registered twice"):
        adapters.add("vgg", Adapter("vgg", lambda net: True))
    with pytest.raises(UnknownNameError, match="unknown model family 'mlp'; known: resnet, vgg, densenet, generic"):
        adapters["mlp"]


def test_builders_are_called_by_name():
    builders: Registry = Registry("dataset")

    @builders.register("squares", description="toy")
    def squares(split: str = "train") -> str:
        return f"squares/{split}"

    assert builders.build("squares", split="test") == "squares/test"
    with pytest.raises(UnknownNameError, match="unknown dataset 'circles'; known: squares"):
        builders.build("circles")
