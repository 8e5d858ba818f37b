"""check-repro's locale variation is real: build B gets a locale that is generated here, or the
variation list says that the locale was not varied."""

from __future__ import annotations

import os

from builder import repro


def test_a_generated_locale_is_in_effect_and_a_missing_one_is_not():
    # scripts/setup generates tr_TR.UTF-8; glibc would silently run C for a missing locale
    assert repro.locale_in_effect("tr_TR.UTF-8"), "tr_TR.UTF-8 is not generated: run scripts/setup"
    assert not repro.locale_in_effect("xx_XX.UTF-8")


def test_build_b_gets_the_first_generated_candidate(monkeypatch):
    env = dict(os.environ)
    monkeypatch.setattr(repro, "B_LOCALES", ("xx_XX.UTF-8", "tr_TR.UTF-8"))
    assert repro._pick_locale(env) == "tr_TR.UTF-8"
    monkeypatch.setattr(repro, "B_LOCALES", ("xx_XX.UTF-8", "yy_YY.UTF-8"))
    assert repro._pick_locale(env) is None
    assert repro._locale_label(None) == ("C.UTF-8 (not varied: none of xx_XX.UTF-8, yy_YY.UTF-8 is generated "
                                         "here; scripts/setup generates xx_XX.UTF-8)")
    assert repro._locale_label("tr_TR.UTF-8") == "tr_TR.UTF-8"
