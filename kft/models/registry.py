"""The backbone registry: registering, listing and finding `BackboneSpec`s.

Names are looked up forgivingly: an exact registered name wins, otherwise
case, then `_` and `-`, are ignored as long as one registered name is left.
"""

import difflib
import fnmatch

from kft._validation import fail_argument
from kft.models.backbone_specs import BUILTIN_SPECS
from kft.models.backbone_specs import BackboneSpec

_REGISTRY = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Adds a `BackboneSpec` to the registry (replacing one of the same name).

    Returns:
        `spec`.

    Example:
    >>> import kft
    >>> from kft.models.simple_cnn import BLOCKS, SimpleCNN
    >>> spec = kft.register_backbone(
    ...     kft.BackboneSpec("tiny_cnn", SimpleCNN, "tf", 16, BLOCKS))
    >>> kft.list_backbones("tiny*")
    ['tiny_cnn']
    >>> unregister_backbone("tiny_cnn")
    """
    if not isinstance(spec, BackboneSpec):
        fail_argument("spec", "a kft.BackboneSpec", spec, TypeError)
    _REGISTRY[spec.name] = spec
    return spec


def unregister_backbone(name: str) -> None:
    """Removes the backbone registered under exactly `name`, if any."""
    _REGISTRY.pop(name, None)


def list_backbones(pattern: str = "*") -> list:
    """Names of the registered backbones that match a shell-style pattern.

    Args:
        pattern: `fnmatch` pattern, matched as names are (case, `_` and
            `-` aside), e.g. `"efficientnet*"` or `"efficientnet_b*"`.
            Defaults to `"*"`.

    Returns:
        Sorted list of names.

    Example:
    >>> import kft
    >>> kft.list_backbones("ResNet5*")
    ['resnet50', 'resnet50v2']
    """
    if not isinstance(pattern, str):
        fail_argument("pattern", "a string such as 'resnet*'", pattern, TypeError)
    # As names match: case, `_` and `-` aside ("efficientnet_b*").
    return sorted(n for n in _REGISTRY
                  if fnmatch.fnmatchcase(n.lower(), pattern.lower())
                  or fnmatch.fnmatchcase(canonical_name(n),
                                         canonical_name(pattern)))


def canonical_name(name: str) -> str:
    """`name` lower-cased without `_` and `-`: the key names match on.

    Example:
    >>> canonical_name("EfficientNet-B0") == canonical_name("efficientnet_b0")
    True
    """
    return name.lower().replace("_", "").replace("-", "")


def resolve_backbone_name(name: str):
    """The registered name `name` refers to, or `None`.

    An exact name wins; otherwise the match ignores case, then `_` and `-`,
    as long as exactly one registered name is left. `"mobilenetv1"` (timm's
    and torchvision's name for it) is `"mobilenet"`.

    Example:
    >>> resolve_backbone_name("EfficientNet_B0")
    'efficientnetb0'
    >>> resolve_backbone_name("MobileNet_V1")
    'mobilenet'
    >>> resolve_backbone_name("vit") is None
    True
    """
    if not isinstance(name, str):
        return None
    if name in _REGISTRY:
        return name
    for key in (str.lower, canonical_name):
        hits = [n for n in _REGISTRY if key(n) == key(name)]
        if len(hits) == 1:
            return hits[0]
    alias = _ALIASES.get(canonical_name(name))
    return alias if alias in _REGISTRY else None


def close_backbone_names(name: str, n: int = 3) -> list:
    """Registered names that look like `name` (`difflib`, case, `_` and `-`
    ignored); the suggestions of the unknown-backbone error.

    Example:
    >>> close_backbone_names("resnet5")
    ['resnet50', 'resnet152', 'resnet50v2']
    """
    text = canonical_name(str(name).strip("*?[]"))
    by_key = {}
    for registered in sorted(_REGISTRY):
        by_key.setdefault(canonical_name(registered), []).append(registered)
    matches = difflib.get_close_matches(text, list(by_key), n=n, cutoff=0.6)
    return [registered for key in matches for registered in by_key[key]][:n]


# keras.applications models left out of the registry (canonical name ->
# Keras' name): they leave some layers to Keras' automatic names.
_COUNTER_NAMED = {"xception": "Xception", "inceptionv3": "InceptionV3",
                  "inceptionresnetv2": "InceptionResNetV2"}
# Other names of registered backbones (canonical -> registered).
_ALIASES = {"mobilenetv1": "mobilenet"}


def not_registered_reason(name) -> str | None:
    """Why a `keras.applications` model named `name` is not registered, or
    `None` for any other name.

    Example:
    >>> not_registered_reason("inception_v3")[:47]
    "keras.applications' InceptionV3 is not register"
    """
    keras_name = _COUNTER_NAMED.get(canonical_name(str(name)))
    if keras_name is None:
        return None
    return (f"keras.applications' {keras_name} is not registered: some of "
            "its layers are named by Keras' global counter (conv2d_4, "
            "batch_normalization_4), which moves with every layer built "
            "before them, so no block pattern finds them in every process.")


def _one_of(names):
    quoted = [repr(n) for n in names]
    return (", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1
            else quoted[0])


def get_backbone(name: str) -> BackboneSpec:
    """The `BackboneSpec` registered under `name`.

    `name` may differ from the registered one in case, `_` and `-` when
    that leaves one candidate: `"ResNet50"` and timm's `"efficientnet_b0"`
    find `"resnet50"` and `"efficientnetb0"`.

    Raises:
        ValueError: if `name` is not registered; the message suggests close
            names and lists all of them.

    Example:
    >>> import kft
    >>> kft.get_backbone("ResNet50").name
    'resnet50'
    """
    resolved = resolve_backbone_name(name)
    if resolved is None:
        close = close_backbone_names(name)
        hint = f" Did you mean {_one_of(close)}?" if close else ""
        why = not_registered_reason(name)
        hint = f" {why}{hint}" if why else hint
        raise ValueError(
            f"Unknown backbone: {name!r}.{hint} Known backbones: "
            f"{', '.join(list_backbones())}."
        )
    return _REGISTRY[resolved]


for _spec in BUILTIN_SPECS:
    register_backbone(_spec)
del _spec
