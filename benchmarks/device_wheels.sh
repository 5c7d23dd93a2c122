#!/usr/bin/env bash
# The wheels the lent GPU machine lacks (it has no internet): run this where the registry is reachable, then send .whl/
# with every device call (.whl/ is git-ignored via .git/info/exclude, so name it in the call's `carry` list).
#
# The device has Python 3.12, torch 2.11, torchvision 0.26, numpy 2.5, scipy, pandas, matplotlib, opencv, pyyaml,
# requests, pytest, timm, ... but not albumentations, pydensecrf, d2l or the Jupyter kernel stack. Each device call
# then starts with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
#
# Usage: bash benchmarks/device_wheels.sh   (idempotent: keeps wheels already there, removes ones no longer pinned)
# Env: PYTHON (pip for downloads, default python3), PY312 (a CPython 3.12 to build pydensecrf2), LIMIT_MIB (25).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEST=.whl
PYTHON=${PYTHON:-python3}
PY312=${PY312:-/root/.pyenv/versions/3.12.1/bin/python3.12}
LIMIT_MIB=${LIMIT_MIB:-25}

# Versions from uv.lock (the ones the project is developed and tested with), Python >= 3.12 branch where it splits.
# Nothing the device already has is shipped: a copy in /tmp/site would shadow the device's own (PYTHONPATH first).
PINS=(
    # albumentations 2 (seglearn.data transforms) and what it imports
    albumentations==2.0.8 albucore==0.0.24 stringzilla==5.3.2 simsimd==6.5.16
    pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
    # executing notebooks headless: nbclient + nbformat + an ipykernel (without debugpy, 5 MiB, which ipykernel
    # imports only to offer a debugger)
    nbclient==0.11.0 nbformat==5.11.1 fastjsonschema==2.22.3 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
    referencing==0.37.0 rpds-py==2026.9.1 jupyter-client==8.10.0 jupyter-core==5.9.1 platformdirs==4.14.5
    traitlets==5.16.1 pyzmq==27.3.0 tornado==6.6.1 ipykernel==7.4.0 comm==0.2.3 nest-asyncio2==1.7.4
    matplotlib-inline==0.2.2 ipython==9.18.1 ipython-pygments-lexers==1.1.1 jedi==0.20.1 parso==0.8.7 pexpect==4.9.0
    ptyprocess==0.7.0 prompt-toolkit==3.0.53 wcwidth==0.9.4 stack-data==0.6.3 executing==2.3.0 asttokens==3.0.2
    pure-eval==0.2.4
    # the chapters' `import d2l.torch as d2l` (installed without its stale numpy 1.23 pins)
    d2l==1.0.3
    # pytest on tests/: pyproject's addopts name --nbval-lax (nbval imports coverage); tests/test_upernet.py compares
    # with smp (which imports timm and huggingface_hub, both on the device)
    nbval==0.11.0 coverage==7.17.3 segmentation-models-pytorch==0.6.0
)
CRF_PIN=pydensecrf2==1.1  # an sdist only: built below for cp312

mkdir -p "$DEST"

norm() {  # PEP 503 name: the wheel file spells "ipython_pygments_lexers", the pin "ipython-pygments-lexers"
    local s=${1,,}
    s=${s//_/-}
    echo "${s//./-}"
}
mib() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1048576 }'; }

# Prune wheels that are not pinned (an older version after a pin change would be installed beside the new one).
declare -A WANTED=()
for pin in "${PINS[@]}" "$CRF_PIN"; do
    WANTED["$(norm "${pin%%==*}")-${pin##*==}"]=1
done
for whl in "$DEST"/*.whl; do
    [[ -e $whl ]] || continue
    IFS=- read -r name version _ <<<"$(basename "$whl")"
    if [[ -z ${WANTED["$(norm "$name")-$version"]:-} ]]; then
        echo "removing $(basename "$whl") (not pinned)"
        rm -f "$whl"
    fi
done

# --no-deps: the list above is the whole closure; pip's resolver would pull numpy/torch again (and d2l's old pins).
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" "${PINS[@]}"

if ! compgen -G "$DEST/pydensecrf2-1.1-cp312-*.whl" >/dev/null; then
    [[ -x $PY312 ]] || { echo "error: need CPython 3.12 at PY312=$PY312 to build $CRF_PIN" >&2; exit 1; }
    # -g0 and -s: Python's own CFLAGS carry -g, and debug info makes the wheel 3.5 MiB instead of ~0.5.
    CFLAGS=-g0 CXXFLAGS=-g0 LDFLAGS=-s "$PY312" -m pip wheel -q --no-deps --no-cache-dir -w "$DEST" "$CRF_PIN"
fi

# Every pin present exactly once (a wheel for another Python or platform would fail only on the device).
missing=0
for key in "${!WANTED[@]}"; do
    count=0
    for whl in "$DEST"/*.whl; do
        IFS=- read -r name version _ <<<"$(basename "$whl")"
        [[ "$(norm "$name")-$version" == "$key" ]] && count=$((count + 1))
    done
    if [[ $count -ne 1 ]]; then
        echo "error: $count wheels for $key in $DEST" >&2
        missing=1
    fi
done
[[ $missing -eq 0 ]] || exit 1

total=0
while read -r size path; do
    printf '%8s MiB  %s\n' "$(mib "$size")" "$(basename "$path")"
    total=$((total + size))
done < <(stat -c '%s %n' "$DEST"/*.whl | sort -rn)
printf '%8s MiB  total, %d wheels in %s (limit %d MiB)\n' "$(mib "$total")" \
    "$(ls "$DEST"/*.whl | wc -l)" "$DEST" "$LIMIT_MIB"
if ((total > LIMIT_MIB * 1048576)); then
    echo "error: $DEST is over $LIMIT_MIB MiB: it travels with every device call beside the data (64 MiB in all)" >&2
    exit 1
fi
