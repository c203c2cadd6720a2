"""UnfoldedRPCA.fit shows a tqdm bar by default, none with progress=False (issue 24)."""
from __future__ import annotations

from tensorrpca import UnfoldedRPCA
from tensorrpca.synthetic import synthetic_rpca


def test_fit_progress_bar_default_on_and_silenced(capsys):
    Y = synthetic_rpca((8, 9, 10), ranks=(2, 2, 2), alpha=0.1, seed=0).Y
    UnfoldedRPCA(ranks=(2, 2, 2), n_layers=3).fit([Y], epochs=2)
    err = capsys.readouterr().err
    assert "fit unfolded rpca" in err and "2/2" in err and "loss=" in err
    m = UnfoldedRPCA(ranks=(2, 2, 2), n_layers=3).fit([Y], epochs=2, progress=False)
    assert capsys.readouterr().err == ""
    assert len(m.fit_history) == 2
