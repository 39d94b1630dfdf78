"""Load nnU-Net checkpoints without running code from them.

nnU-Net's ``nnUNetPredictor.initialize_from_trained_model_folder`` reads ``checkpoint_*.pth`` with
``torch.load(..., weights_only=False)``, i.e. plain unpickling: a shared checkpoint whose pickle calls, say,
``os.system`` runs it while ``kits predict`` loads the model. Here checkpoints go through PyTorch's restricted
unpickler (``weights_only=True``), which builds tensors, containers and plain values and, on top of that, only
the numpy scalar types nnU-Net's trainer writes (:func:`checkpoint_safe_globals`). Anything else is refused with
a one-line :class:`KitsInputError`; ``trust=True`` (``kits predict --trust-checkpoints``) restores nnU-Net's full
unpickling for files from a trusted source.
"""

from __future__ import annotations

import inspect
import os
import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kits_plugins.utilities.image_io import KitsInputError

if TYPE_CHECKING:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

TRUST_HINT = "if the file comes from a trusted source, load it with --trust-checkpoints"


def checkpoint_safe_globals() -> list[Any]:
    """What an nnU-Net 2.8 checkpoint needs beyond torch's default ``weights_only`` set.

    Torch's default set already covers the rest of ``nnUNetTrainer.save_checkpoint``'s dict (tensors and
    ``OrderedDict`` state dicts, ``torch.device`` in ``init_args``, ``_codecs.encode`` for bytes). What is left
    are numpy scalars: the trainer logs ``np.mean``/``np.nanmean`` results (losses, pseudo Dice) in
    ``logging`` and keeps the best EMA pseudo Dice in ``_best_ema``. A numpy scalar pickles as
    ``scalar(dtype(code, ...), bytes)`` followed by a ``BUILD`` of the dtype, so the unpickler needs the
    ``scalar`` function (spelt ``numpy._core...`` by numpy 2, ``numpy.core...`` by numpy 1),
    ``numpy.dtype`` and the dtype classes that occur: float32 (every value under numpy 2) and float64
    (numpy 1 promotes the EMA ``0.9 * ema + 0.1 * dice`` to float64 from the second epoch on).
    """
    import numpy as np

    scalar = np.float32(0).__reduce__()[0]  # numpy's scalar constructor, whatever module it lives in
    return [
        (scalar, "numpy._core.multiarray.scalar"),
        (scalar, "numpy.core.multiarray.scalar"),
        np.dtype,
        type(np.dtype(np.float32)),
        type(np.dtype(np.float64)),
    ]


def _reason(error: BaseException) -> str:
    """The first sentence of an exception's message (torch's are paragraphs)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0].split(". ")[0].rstrip(".") if lines else type(error).__name__


def _unreadable(path: Path, error: BaseException) -> KitsInputError:
    return KitsInputError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {_reason(error)}")


def _refusal(path: Path, error: pickle.UnpicklingError) -> KitsInputError:
    """The restricted unpickler stopped: say what it refused (or that the file is no checkpoint at all)."""
    import torch

    try:  # the globals the pickle names that are not allowed (static scan, nothing is called)
        refused = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception as scan_error:  # not a torch.save zip archive: garbage rather than a refusal
        return _unreadable(path, scan_error)
    # a refused type without a global of its own (e.g. an unlisted numpy dtype): torch's own short reason
    what = f"it asks for {', '.join(refused)}" if refused else _reason(error.__context__ or error)
    return KitsInputError(
        f"{path}: checkpoint refused ({what}): only tensors, plain values and nnU-Net's numpy scalars are "
        f"unpickled, anything else could run code; {TRUST_HINT}"
    )


def load_checkpoint(path: str | os.PathLike, trust: bool = False) -> dict:
    """Read a ``torch.save`` checkpoint onto the CPU without running code from it (``trust=False``).

    ``trust=True`` unpickles fully, as nnU-Net does (``weights_only=False``): only for trusted files.
    Every failure is a one-line :class:`KitsInputError` naming the file.
    """
    import torch
    from torch.torch_version import TorchVersion

    path = Path(path)
    try:
        if trust:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        else:
            # TorchVersion compares with tuples through methods it sets at run time, which its annotations lack
            if TorchVersion(torch.__version__) < (2, 6):  # type: ignore[operator]
                raise KitsInputError(
                    f"{path}: loading checkpoints without running code needs torch >= 2.6 (installed: "
                    f"{torch.__version__}); upgrade torch, or {TRUST_HINT}"
                )
            with torch.serialization.safe_globals(checkpoint_safe_globals()):
                try:
                    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
                except pickle.UnpicklingError as e:
                    raise _refusal(path, e) from None
    except KitsInputError:
        raise
    except OSError as e:
        if path.is_file() and not isinstance(e, PermissionError):  # e.g. a seek past the end of a truncated file
            raise _unreadable(path, e) from None
        raise KitsInputError(f"{path}: cannot read checkpoint ({e.strerror or _reason(e)})") from None
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise _unreadable(path, e) from None
    if not isinstance(checkpoint, dict):
        raise KitsInputError(f"{path}: not an nnU-Net checkpoint (holds a {type(checkpoint).__name__}, not a dict)")
    return checkpoint


def _entry(checkpoint: dict, path: Path, *keys: str) -> Any:
    value: Any = checkpoint
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise KitsInputError(f"{path}: not an nnU-Net checkpoint (no {'/'.join(keys)!r} entry)")
        value = value[key]
    return value


def initialize_from_model_folder(
    predictor: nnUNetPredictor,
    model_folder: str | os.PathLike,
    use_folds: tuple[int | str, ...] | list[int | str] | str | None = None,
    checkpoint_name: str = "checkpoint_final.pth",
    trust: bool = False,
) -> nnUNetPredictor:
    """Initialise ``predictor`` (an ``nnUNetPredictor``) from a trained model folder; returns it.

    Mirrors nnU-Net 2.8's ``nnUNetPredictor.initialize_from_trained_model_folder`` step by step (folds,
    ``dataset.json``/``plans.json``, trainer class found by nnU-Net's ``recursive_find_trainer_class_by_name``
    including the ``nnUNet_extTrainer`` folders, network from the trainer's ``build_network_architecture``,
    first fold's weights loaded) and hands the result to ``predictor.manual_initialization``; the only change
    is that each fold's checkpoint is read with :func:`load_checkpoint` (``trust``) instead of
    ``torch.load(weights_only=False)``.
    """
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = Path(model_folder)
    if use_folds is None:
        use_folds = nnUNetPredictor.auto_detect_available_folds(str(folder), checkpoint_name)
    dataset_json = load_json(str(folder / "dataset.json"))
    plans = load_json(str(folder / "plans.json"))
    plans_manager = PlansManager(plans)
    if isinstance(use_folds, str):
        use_folds = [use_folds]

    parameters = []
    for i, f in enumerate(use_folds):
        f = int(f) if f != "all" else f
        path = folder / f"fold_{f}" / checkpoint_name
        checkpoint = load_checkpoint(path, trust=trust)
        if i == 0:
            trainer_name = _entry(checkpoint, path, "trainer_name")
            configuration_name = _entry(checkpoint, path, "init_args", "configuration")
            inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes")
        parameters.append(_entry(checkpoint, path, "network_weights"))

    configuration_manager = plans_manager.get_configuration(configuration_name)
    num_input_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    num_output_channels = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    if "plans_manager" in inspect.signature(trainer_class.build_network_architecture).parameters:
        network = trainer_class.build_network_architecture(
            plans_manager, configuration_manager, num_input_channels, num_output_channels,
            enable_deep_supervision=False,
        )
    else:  # nnU-Net's deprecated signature, still accepted by 2.8
        warnings.warn(
            f"Trainer {trainer_name} uses the old build_network_architecture signature. Please update to the new "
            "signature: build_network_architecture(plans_manager, configuration_manager, num_input_channels, "
            "num_output_channels, enable_deep_supervision). The old signature will be removed in a future version.",
            DeprecationWarning, stacklevel=2,
        )
        network = trainer_class.build_network_architecture(
            configuration_manager.network_arch_class_name,
            configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import,
            num_input_channels, num_output_channels,
            enable_deep_supervision=False,
        )
    network.load_state_dict(parameters[0])  # as nnU-Net: the network starts with the first fold's weights
    predictor.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                    trainer_name, inference_allowed_mirroring_axes)
    return predictor
