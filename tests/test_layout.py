"""The package's shape: no import cycles, light imports where promised, one error base, CLI
modules as leaves, config files that import nothing heavy, and a README map that matches
the tree."""
import ast
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "efficientsam_jax"
# Modules run with `python -m`: they define absl flags when imported, so nothing imports them.
CLI_MODULES = {"efficientsam_jax.main", "efficientsam_jax.convert", "efficientsam_jax.predict",
               "efficientsam_jax.evaluate", "efficientsam_jax.cache_teacher",
               "efficientsam_jax.bench.__main__", "efficientsam_jax.demo.__main__"}
MAX_LINES = 350


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: pathlib.Path) -> set[str]:
  """Every efficientsam_jax module a file imports, at any depth (lazy imports included)."""
  modules = _modules()
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name in modules}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for a in node.names:  # `from pkg import module` names the module, else the package
        full = f"{node.module}.{a.name}"
        if full in modules:
          out.add(full)
        elif node.module in modules:
          out.add(node.module)
  return out


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    deps = set()
    for dep in _imports(path):
      # `from efficientsam_jax.models import vit` names the module vit, not the package.
      if dep != name and not name.startswith(dep + "."):
        deps.add(dep)
    graph[name] = deps
  return graph


def test_no_import_cycles():
  graph = _graph()
  state, stack, cycles = {}, [], []

  def visit(m):
    state[m] = 1
    stack.append(m)
    for d in sorted(graph.get(m, ())):
      if state.get(d) == 1:
        cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
      elif d not in state:
        visit(d)
    stack.pop()
    state[m] = 2

  for m in sorted(graph):
    if m not in state:
      visit(m)
  assert not cycles, cycles


def test_no_library_module_imports_a_command_line_module():
  graph = _graph()
  offenders = {m: sorted(deps & CLI_MODULES) for m, deps in graph.items()
               if m not in CLI_MODULES and deps & CLI_MODULES}
  assert not offenders, offenders


def test_inference_and_model_files_load_no_data_pipeline_library():
  code = ("import sys\n"
          "import efficientsam_jax.inference, efficientsam_jax.io.model_files\n"
          "import efficientsam_jax.tasks.sami.export, efficientsam_jax.tasks.finetune.export\n"
          "heavy = {'grain', 'tensorflow_datasets', 'tensorflow', 'pycocotools', 'array_record'}\n"
          "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       check=True)
  assert out.stdout.strip() == "[]", out.stdout


def test_one_exception_base():
  """Every exception class of the package is UserError (user mistakes) or one of the two
  runtime signals the trainer turns into exit statuses."""
  allowed = {("efficientsam_jax.errors", "UserError"), ("efficientsam_jax.train.runtime",
                                                          "Preempted"),
             ("efficientsam_jax.train.runtime", "NonFiniteError")}
  found = set()
  for name, path in _modules().items():
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ClassDef) and any(
          re.search(r"(Exception|Error)$", ast.unparse(b)) for b in node.bases):
        found.add((name, node.name))
  assert found == allowed, found ^ allowed


def test_long_modules_say_why():
  for path in PACKAGE.rglob("*.py"):
    lines = path.read_text().count("\n")
    if lines > MAX_LINES:
      doc = ast.get_docstring(ast.parse(path.read_text())) or ""
      assert "long because" in doc or "length" in doc, (
          f"{path.relative_to(REPO)} has {lines} lines and no reason in its docstring")


def test_config_files_import_only_ml_collections_and_configs():
  for path in (REPO / "configs").glob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        names = [node.module or ""]
      for name in names:
        assert name.split(".")[0] in ("ml_collections", "configs"), (path.name, name)


def test_readme_layout_matches_the_package():
  """README's "## Layout" block names every package and top-level module, and nothing else."""
  readme = (REPO / "README.md").read_text()
  section = readme.split("## Layout", 1)[1].split("```", 2)[1]
  listed = set(re.findall(r"^  ([a-z_]+)(?:/|\.py)", section, re.MULTILINE))
  actual = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
  actual |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
  assert listed == actual, {"listed, not in the tree": listed - actual,
                            "in the tree, not listed": actual - listed}
