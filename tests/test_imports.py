"""Import boundaries: `import shards` stays light, only shards/tf imports TensorFlow, and the
package is one stack: each floor imports only from the floors below it, lazily or not, with no
circle (ruff's TID rules check the framework imports from each file)."""

import ast
import json
import os
import pickle
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "shards")
HEAVY = ("tensorflow", "keras", "cv2", "numba", "ray", "boto3", "torch", "jax", "grain")

#: The floors of DESIGN.md's layout, from the bottom; modules of one floor may import each other
#: (without a circle), and the package root, which names the public API lazily, is above all.
FLOORS = (
    (
        "shards.errors",
        "shards.version",
        "shards.lazy",
        "shards.io",
        "shards.frameworks",
        "shards.synthetic",
        "shards.permutation",
    ),
    ("shards.options", "shards.targets", "shards.cluster"),
    ("shards.sources",),
    ("shards.formats",),
    ("shards.layout",),
    ("shards.read", "shards.write"),
    ("shards.keras",),
    ("shards.tf", "shards.torch"),
    ("shards.dataset", "shards.trainer", "shards.model_cli"),
    ("shards.cli",),
)


def modules():
    """Every module of the package, by dotted name, with its parsed source."""
    found = {}
    for folder, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                found[dotted] = ast.parse(open(path, encoding="utf-8").read(), path)
    return found


def imported_names(tree, *, module_level_only):
    """The modules a file imports; with `module_level_only`, only at import time (not inside
    functions, nor under `if TYPE_CHECKING:`)."""
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    names = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def floor_of(module):
    """The index in FLOORS of the floor that holds `module`."""
    for index, floor in enumerate(FLOORS):
        if any(module == top or module.startswith(top + ".") for top in floor):
            return index
    raise AssertionError(f"{module} is on no floor of FLOORS: give it one")


def package_graph():
    """module -> the package's modules it imports anywhere (in functions and under
    TYPE_CHECKING too), each import resolved to the deepest module it names."""
    found = modules()
    graph = {}
    for module, tree in found.items():
        targets = set()
        for name in imported_names(tree, module_level_only=False):
            while name and name not in found:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):  # not its own package
                targets.add(name)
        graph[module] = sorted(targets)
    return graph


def test_each_floor_imports_only_from_the_floors_below_it():
    upward = [
        f"{module} -> {target}"
        for module, targets in package_graph().items()
        if module != "shards"  # the package root names the public API, from every floor
        for target in targets
        if target != "shards" and floor_of(target) > floor_of(module)
    ]
    assert upward == []


def test_read_and_write_and_the_frameworks_stay_apart():
    """Siblings of one floor: the reader never imports the run on Ray, nor the other way round;
    the torch feed needs nothing of TensorFlow's."""
    graph = package_graph()
    apart = [("shards.read", "shards.write"), ("shards.write", "shards.read"), ("shards.torch", "shards.tf")]
    crossing = [
        f"{module} -> {target}"
        for one, other in apart
        for module, targets in graph.items()
        if module.startswith(one + ".")
        for target in targets
        if target.startswith(other + ".")
    ]
    assert crossing == []


def test_import_shards_loads_neither_tensorflow_nor_opencv_nor_ray():
    probe = f"import json, sys, shards; print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(result.stdout) == []


def test_only_the_tf_package_imports_tensorflow_or_keras():
    offenders = [
        (module, name)
        for module, tree in modules().items()
        if not module.startswith("shards.tf")
        for name in imported_names(tree, module_level_only=False)
        if name.split(".")[0] in ("tensorflow", "keras")
    ]
    assert offenders == []


def test_only_the_torch_package_and_the_framework_loader_import_torch():
    offenders = [
        (module, name)
        for module, tree in modules().items()
        if not module.startswith("shards.torch")
        for name in imported_names(tree, module_level_only=False)
        if name.split(".")[0] in ("torch", "jax")
    ]
    assert offenders == []


def test_the_import_graph_has_no_cycles_even_through_lazy_imports():
    graph = package_graph()
    state, path = {}, []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for target in graph[module]:
            if state.get(target) == "open":
                cycle = path[path.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert len(state) > 30  # the walk saw the package


def test_the_driver_of_a_training_job_loads_no_tensorflow():
    """The trainer actor and Ray Train workers load TensorFlow; the process that submits them
    (`shards train`, `jobs/train.py`) need not pay its seconds and hundreds of MB."""
    probe = (
        "import json, sys, shards.trainer, shards.model_cli, shards.cli; "
        "print(json.dumps([m for m in ('tensorflow', 'keras') if m in sys.modules]))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(result.stdout) == []


def test_python_started_beside_a_clone_named_shards_imports_the_package(tmp_path):
    """A clone is a folder named `shards` too; Python started in the folder that holds it must
    still import the package (`make` installs in editable compat mode for that)."""
    os.symlink(ROOT, tmp_path / "shards")
    probe = "import shards; print(hasattr(shards, 'open'), shards.__file__)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True)
    has_open, path = result.stdout.split()
    assert has_open == "True" and path.endswith(os.path.join("shards", "__init__.py"))


def test_a_shard_task_of_files_imports_neither_the_reader_nor_the_driver_nor_the_listing(tmp_path):
    """A Ray worker's first task unpickles its ShardTask (packed, as the driver sends it) and
    imports `shards.write.task`, on the run's start-up path: the reader, the driver's run loop,
    the listing code and pyarrow (~0.1 s of each worker's start) stay out of it when the inputs
    are files and DEST is a folder."""
    import numpy as np

    from shards.options import PreprocessOptions
    from shards.sources.files import FileInputs
    from shards.targets import Targets
    from shards.write.task import PackedTask, ShardTask

    paths = [str(tmp_path / f"{i}.jpg") for i in range(3)]
    targets = Targets.single_class(["a"])
    task = ShardTask(
        str(tmp_path), "shard-00000", np.arange(3), paths, targets, targets.empty(3), [None] * 3,
        FileInputs(paths), PreprocessOptions(), "key",
    )  # fmt: skip
    (tmp_path / "task.pickle").write_bytes(pickle.dumps(PackedTask.of(task)))
    unwanted = ("shards.read.dataset", "shards.write.run", "shards.cli", "shards.sources.kinds", "pyarrow")
    probe = (
        f"import json, pickle, sys; task = pickle.load(open({str(tmp_path / 'task.pickle')!r}, 'rb')).unpack(); "
        f"import shards.write.task; print(json.dumps([m for m in {unwanted!r} if m in sys.modules]))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(result.stdout) == []


def test_every_public_name_of_the_package_resolves():
    import shards
    from shards.dataset import open_shards
    from shards.write.run import preprocess

    assert all(getattr(shards, name) is not None for name in shards.__all__)
    assert shards.open is open_shards and shards.preprocess is preprocess
    assert set(shards.__all__) <= set(dir(shards))
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        shards.missing  # noqa: B018


def test_every_public_name_of_the_sources_package_resolves():
    import shards.sources
    from shards.sources.kinds import list_sources

    assert all(getattr(shards.sources, name) is not None for name in shards.sources.__all__)
    assert shards.sources.list_sources is list_sources
    assert set(shards.sources.__all__) <= set(dir(shards.sources))
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        shards.sources.missing  # noqa: B018


def test_the_sources_ask_their_place_never_the_storage_helpers():
    """SRC is a SourcePlace as DEST is a Location: the source modules do not dispatch on
    `storage.is_remote` strings; a new kind of place is one class in shards.io.source."""
    askers = [
        module
        for module, targets in package_graph().items()
        if module.startswith("shards.sources.") and "shards.io.storage" in targets
    ]
    assert askers == []


def test_a_source_place_is_chosen_by_scheme_and_unknown_schemes_are_one_line():
    from shards.errors import SourceError
    from shards.io.source import LocalSource, ObjectSource, source_place

    assert type(source_place("s3://bucket/images")) is ObjectSource and source_place("s3://b/x").remote
    local = source_place("file:///data/images")
    assert type(local) is LocalSource and local.uri == "/data/images" and not local.remote
    with pytest.raises(SourceError, match=r"^ftp://host/x: unsupported scheme; SRC is a local path, s3:// or gs://$"):
        source_place("ftp://host/x")
