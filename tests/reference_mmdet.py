"""Load mmdetection 3.3.0's loss path (RetinaHead, PISARetinaHead, GHM/PISA losses) for parity tests.

Not a test module: `tests/train/test_reference_mmdet.py` imports it. mmdetection is never a dependency of
this project; it is installed into a separate folder (docs/reference-parity.md) and put on
sys.path only here:

    make reference      # pip install --target .reference --no-deps mmdet==3.3.0 mmengine==0.10.7 ...

mmcv is not installed: mmdet 3.3.0 requires mmcv >= 2.0.0rc4, < 2.2.0, and mmcv has no wheel for
this torch. The loss path on CPU needs none of mmcv's compiled ops (FocalLoss falls back to its
pure-PyTorch formula off CUDA; GHM, SmoothL1, L1, PISA, MaxIoUAssigner, DeltaXYWHBBoxCoder,
PseudoSampler and AnchorGenerator are plain torch). mmdet's modules only *import* names from mmcv
(ConvModule, ops like nms or DeformConv2d, transforms' BaseTransform), so a stand-in `mmcv` package
is registered in sys.modules before mmdet is imported: every `mmcv.*` module exists, and every name
looked up on it is a placeholder class that can be subclassed, called or decorated with, but raises
if something actually tries to compute with it. The RetinaHead built here uses ConvModule only
in `_init_layers`, which the parity test replaces (it feeds logits and deltas directly).
OpenCV (`cv2`) is stubbed the same way when it is not installed: mmdet.structures.mask imports
it at module level, and nothing on the loss path calls it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from typing import Any

INSTALL_RECIPE = (
    "`make reference` installs it into .reference/ (or set MMDET_REFERENCE_PATH to such a "
    "folder); see docs/reference-parity.md"
)
# The repository's own .reference/ folder, where `make reference` (and .ci/run) installs it.
DEFAULT_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".reference"
)
# Inside mmdet's accepted range [2.0.0rc4, 2.2.0).
STUB_MMCV_VERSION = "2.1.0"
# Compiled packages mmdet imports at module level but the loss path never calls; stubbed only
# where they are not installed (mmdet.structures.mask: cv2, shapely; HungarianAssigner: scipy).
OPTIONAL_STUBS = ("cv2", "shapely", "scipy")


class _Placeholder:
    """Stands in for any mmcv class or function: importable, subclassable, inert.

    Used as a bare decorator (`@avoid_cache_randomness` on a class) it returns what it decorates.
    """

    _stub = True

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls.__dict__.get("_stub") and len(args) == 1 and not kwargs and callable(args[0]):
            return args[0]
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __init_subclass__(cls, **kwargs: Any) -> None:  # accepts metaclass-style keywords
        super().__init_subclass__()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("stub mmcv: this mmcv feature is not available in the parity test")


def _placeholder(name: str) -> type:
    return type(name, (_Placeholder,), {"__module__": "mmcv.stub", "_stub": True})


class _StubModule(types.ModuleType):
    """A module on which every missing attribute is a placeholder class."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        value = _placeholder(name)
        setattr(self, name, value)
        return value


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers `import mmcv...` (and the other stubbed roots) with `_StubModule` packages."""

    def __init__(self) -> None:
        self.roots: set[str] = set()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StubModule(spec.name)
        module.__path__ = []  # a package, so submodules import
        if spec.name == "mmcv":
            module.__version__ = STUB_MMCV_VERSION
            module.version_info = (2, 1, 0)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


_FINDER = _StubFinder()


def _install_stubs() -> None:
    """Register the stand-in mmcv (always: a real mmcv 2.2 fails mmdet's version check, and
    2.0/2.1 have no wheel for this torch), and OPTIONAL_STUBS where they are not installed."""
    real_mmcv = sys.modules.get("mmcv")
    if real_mmcv is not None and not isinstance(real_mmcv, _StubModule):
        raise ImportError("a real mmcv is already imported; the parity test needs its stub")
    _FINDER.roots.add("mmcv")
    for root in OPTIONAL_STUBS:
        if root not in sys.modules and importlib.util.find_spec(root) is None:
            _FINDER.roots.add(root)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def _remove_optional_stubs() -> None:
    """Take the optional stubs (cv2, shapely, scipy) out of sys.modules and the finder once mmdet
    is imported (its modules keep their references), so later imports in the same process see
    the real environment. The mmcv stub stays: mmdet may import from mmcv lazily."""
    for root in list(_FINDER.roots):
        if root == "mmcv":
            continue
        _FINDER.roots.discard(root)
        for name in [n for n in sys.modules if n == root or n.startswith(root + ".")]:
            if isinstance(sys.modules[name], _StubModule):
                del sys.modules[name]


def reference_path() -> str | None:
    """The folder to put on sys.path (MMDET_REFERENCE_PATH, else .reference/ if present)."""
    path = os.environ.get("MMDET_REFERENCE_PATH")
    if path:
        return path
    return DEFAULT_PATH if os.path.isdir(DEFAULT_PATH) else None


def _mmdet_findable() -> bool:
    return importlib.util.find_spec("mmdet") is not None


def load_mmdet() -> types.SimpleNamespace | None:
    """mmdet's classes the parity test needs, or None when mmdetection 3.3.0 is not available.

    Raises ImportError (with the install recipe) when mmdet is there but cannot be imported.
    """
    if not _mmdet_findable():
        path = reference_path()
        if path is None or not os.path.isdir(path):
            return None
        # Appended, not prepended: the folder must not shadow the product venv's packages.
        if path not in sys.path:
            sys.path.append(path)
        importlib.invalidate_caches()
        if not _mmdet_findable():
            return None
    _install_stubs()
    try:
        import mmdet
        from mmdet.models.dense_heads.pisa_retinanet_head import PISARetinaHead
        from mmdet.models.dense_heads.retina_head import RetinaHead
        from mmdet.models.losses import GHMC, GHMR, FocalLoss, L1Loss, SmoothL1Loss
        from mmdet.models.losses.pisa_loss import carl_loss, isr_p
        from mmdet.models.task_modules.assigners import MaxIoUAssigner
        from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
        from mmdet.models.task_modules.prior_generators import AnchorGenerator
        from mmengine.structures import InstanceData
    except Exception as exc:  # noqa: BLE001 - any failure means "reference unusable"
        raise ImportError(
            f"mmdetection found but not importable ({exc!r}); {INSTALL_RECIPE}"
        ) from exc
    finally:
        _remove_optional_stubs()
    if mmdet.__version__ != "3.3.0":
        raise ImportError(f"need mmdet 3.3.0, found {mmdet.__version__}; {INSTALL_RECIPE}")
    return types.SimpleNamespace(
        version=mmdet.__version__,
        RetinaHead=RetinaHead,
        PISARetinaHead=PISARetinaHead,
        FocalLoss=FocalLoss,
        GHMC=GHMC,
        GHMR=GHMR,
        L1Loss=L1Loss,
        SmoothL1Loss=SmoothL1Loss,
        isr_p=isr_p,
        carl_loss=carl_loss,
        MaxIoUAssigner=MaxIoUAssigner,
        DeltaXYWHBBoxCoder=DeltaXYWHBBoxCoder,
        AnchorGenerator=AnchorGenerator,
        InstanceData=InstanceData,
    )
