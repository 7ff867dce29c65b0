#!/usr/bin/env bash
# Coverage-guided fuzzing of the frame decoder and the session (fuzz/README.md).
#
#   scripts/fuzz.sh --quick        both targets for 15 s each (CI); fails on any crash
#   scripts/fuzz.sh                the long campaign: frame 2 M runs, then session 10 M runs
#   scripts/fuzz.sh [--runs N | --time SECONDS] [frame] [session]
#
# The first run installs the pinned cargo-fuzz into fuzz/.tools (gitignored) with
# `cargo install --locked`; libFuzzer itself is compiled from the C++ sources the
# libfuzzer-sys crate ships, so a C++ compiler is needed (installed with apt-get when
# missing and this runs as root). Everything builds on the stable toolchain: no
# sanitizer (`-s none`) needs no nightly flag. FUZZ_SANITIZER=address builds with
# AddressSanitizer instead, which takes -Zsanitizer and so RUSTC_BOOTSTRAP=1 (set here,
# for that build only) and its own target directory.
#
# Each target fuzzes fuzz/corpus/TARGET (grown, gitignored) and the committed seeds in
# fuzz/seeds/TARGET with the dictionary fuzz/shmlink.dict. A crash, a panic, a leak the
# session target's oracles catch, or a time-out makes libFuzzer exit non-zero; the
# script then prints the end of the log and the input saved in fuzz/artifacts/TARGET/,
# and exits 1. Logs are in fuzz/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
TOOLS="$PWD/fuzz/.tools"
SANITIZER="${FUZZ_SANITIZER:-none}"

usage() {
  sed -n '2,6s/^# \{0,1\}//p' "$0" >&2
  exit 2
}

mode=long
limit=()
targets=()
while (($#)); do
  case "$1" in
    --quick) mode=quick ;;
    --runs) limit=("-runs=${2:?--runs needs a number}"); shift ;;
    --time) limit=("-max_total_time=${2:?--time needs seconds}"); shift ;;
    frame | session) targets+=("$1") ;;
    -h | --help) usage ;;
    *) echo "fuzz.sh: unknown argument $1" >&2; usage ;;
  esac
  shift
done
((${#targets[@]})) || targets=(frame session)

limit_for() {
  if ((${#limit[@]})); then
    echo "${limit[0]}"
  elif [[ $mode == quick ]]; then
    echo "-max_total_time=15"
  elif [[ $1 == frame ]]; then
    # A million runs a second and saturated in seconds: most runs go to the session.
    echo "-runs=2000000"
  else
    echo "-runs=10000000"
  fi
}

# Options of one target. A session input of 1 KiB holds dozens of records; longer ones
# buy no new coverage, but each record may bring three memory files (a dozen system
# calls each), so unbounded inputs drag the session target from ~13 000 to ~1 000
# runs a second (fuzz/README.md).
options_for() {
  if [[ $1 == session ]]; then
    echo "-max_len=1024"
  fi
}

command -v cargo >/dev/null || { echo "fuzz.sh: cargo is required" >&2; exit 1; }
command -v python3 >/dev/null || { echo "fuzz.sh: python3 is required" >&2; exit 1; }
if ! command -v c++ >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "fuzz.sh: installing g++ (libfuzzer-sys compiles libFuzzer)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
  else
    echo "fuzz.sh: a C++ compiler (c++) is required to build libFuzzer" >&2
    exit 1
  fi
fi

if [[ "$("$TOOLS/bin/cargo-fuzz" --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
  echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION into fuzz/.tools" >&2
  cargo install --locked --quiet --force cargo-fuzz --version "$CARGO_FUZZ_VERSION" --root "$TOOLS"
fi
export PATH="$TOOLS/bin:$PATH"

# The seeds are generated from PROTOCOL.md §8 and peers/hostile-frames.json: stale seeds
# mean one of those changed without `python3 fuzz/make-seeds.py`.
python3 fuzz/make-seeds.py --check

build=(-s "$SANITIZER")
if [[ $SANITIZER != none ]]; then
  export RUSTC_BOOTSTRAP=1
  build+=(--target-dir "fuzz/target/$SANITIZER")
fi

echo "fuzz.sh: building ${targets[*]} (sanitizer: $SANITIZER)" >&2
for target in "${targets[@]}"; do
  cargo fuzz build "${build[@]}" "$target"
done

mkdir -p fuzz/logs
summary=()
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  log="fuzz/logs/$target.log"
  run_limit=$(limit_for "$target")
  read -r -a options <<<"$(options_for "$target")"
  echo "fuzz.sh: $target $run_limit ${options[*]} (log: $log)" >&2
  start=$SECONDS
  if ! cargo fuzz run "${build[@]}" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -dict=fuzz/shmlink.dict -timeout=10 -print_final_stats=1 "$run_limit" \
    "${options[@]}" >"$log" 2>&1; then
    echo "fuzz.sh: $target FAILED after $((SECONDS - start)) s; from $log:" >&2
    grep -m 5 -E "panicked|==ERROR|SUMMARY|deadly signal|timeout" "$log" >&2 || true
    grep -B 2 -A 12 -m 1 "Failing input" "$log" >&2 || tail -n 30 "$log" >&2
    echo "fuzz.sh: failing inputs:" >&2
    ls -l "fuzz/artifacts/$target/" >&2 || true
    exit 1
  fi
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  files=$(find "fuzz/corpus/$target" -type f | wc -l)
  done_line=${done_line#*DONE}
  summary+=("$target: ${runs:-?} runs in $((SECONDS - start)) s (${rate:-?}/s);${done_line%% rss:*}; fuzz/corpus/$target holds $files inputs; no crash")
done

printf 'fuzz.sh: %s\n' "${summary[@]}"
echo "fuzz: ${#targets[@]} passed, 0 failed"
