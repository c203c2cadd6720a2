"""``ebsdtk view PATH``: open a volume in napari with the recovery widget docked."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("view", help="open a volume in napari with the 'Recover slices' widget",
                       description="Open PATH (.ang, folder of .ang, .dream3d, .h5) in napari, with the "
                       "'Recover slices' and 'Clean outliers (RPCA)' widgets docked. Needs the napari extra.")
    p.add_argument("path", nargs="?", help="volume to open (omit for the bundled synthetic sample)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    try:  # load Triton's LLVM before Qt/OpenGL: loading it after Mesa's llvmpipe GL can segfault
        import triton  # noqa: F401
        import triton.runtime  # noqa: F401
    except Exception:
        pass
    try:
        import napari
    except ImportError as exc:
        from ..errors import EBSDDependencyError

        raise EBSDDependencyError('ebsdtk view needs napari: pip install "ebsd-tensor-toolkit[napari]"') from exc
    viewer = napari.Viewer(title="ebsd-tensor-toolkit")
    if args.path:
        viewer.open(args.path, plugin="ebsd-tensor-toolkit")
    else:
        viewer.open_sample("ebsd-tensor-toolkit", "two-missing-slices")
    viewer.window.add_plugin_dock_widget("ebsd-tensor-toolkit", "Recover slices")
    viewer.window.add_plugin_dock_widget("ebsd-tensor-toolkit", "Clean outliers (RPCA)")
    napari.run()
    return 0
