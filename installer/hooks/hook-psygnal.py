"""psygnal (napari's events) is compiled with mypyc: its modules import a shared helper extension
named ``<hash>__mypyc`` that the import graph cannot see inside the compiled files."""

from importlib.metadata import distribution

from PyInstaller.utils.hooks import collect_submodules

hiddenimports = collect_submodules("psygnal", filter=lambda n: "testing" not in n)
hiddenimports += sorted(
    {
        str(f).split(".")[0]
        for f in distribution("psygnal").files or []
        if "__mypyc" in str(f) and "/" not in str(f)
    }
)
