"""Trained cascades as one shareable archive: export, verify and install (kits export-model / install-model),
and the models ``kits predict -m`` runs.

- :mod:`.manifest`: ``kits_model.json`` (stages, settings, SHA-256 of every member), its checks and the version rule.
- :mod:`.archive`: writing an archive from ``nnUNet_results``, verifying one, unpacking it without
  ``extractall`` (nothing written unless every member checks out), the models folder (``$KITS_MODELS``, else
  ``platformdirs.user_data_dir("kits-cascade")/models``) and resolving ``-m NAME|FOLDER|ZIP``.

An installed model is ``<models>/<name>/kits_model.json`` plus ``<models>/<name>/nnUNet_results/...`` in nnU-Net's
own layout, so the stage models load with ``results=<models>/<name>/nnUNet_results`` and no environment variable.
"""
