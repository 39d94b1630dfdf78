"""``kits_plugins.dataset_conversion.commands``: what the module itself decides, the argument types and defaults of
``kits derive-stages`` (one-line errors, exit code 2)."""

from __future__ import annotations

import pytest

from kits_plugins.cli import main


def _run(argv, capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(("value", "message"), [("1.5", "'1.5' is above 1"), ("-0.1", "'-0.1' is negative"),
                                                ("nan", "'nan' is not a finite number")])
def test_truncate_share_is_a_share(value, message, capsys):
    rc, err = _run(["derive-stages", "--truncate-share", value], capsys)
    assert rc == 2 and f"argument --truncate-share: {message}" in err
    rc, err = _run(["derive-stages", "--extend-share", value], capsys)
    assert rc == 2 and f"argument --extend-share: {message}" in err


def test_masks_from_refuses_only_the_box_options_given(tmp_path, capsys):
    """Box options default to unset, so --masks-from can tell a given --seed (refused) from its default."""
    rc, err = _run(["derive-stages", "--masks-from", str(tmp_path), "--seed", "12345", "--margin-mm", "15"], capsys)
    assert rc == 2 and "Traceback" not in err
    assert err.strip().endswith("were fixed when 222 was derived: drop --margin-mm, --seed")
    rc, err = _run(["derive-stages", "--masks-from", str(tmp_path), "--extend-share", "0.5"], capsys)
    assert rc == 2 and err.strip().endswith("drop --extend-share")
    rc, err = _run(["derive-stages", "--masks-from", str(tmp_path), "--raw", str(tmp_path)], capsys)
    assert rc == 2 and "no Dataset220_* folder" in err  # past the option check: no box option was given
