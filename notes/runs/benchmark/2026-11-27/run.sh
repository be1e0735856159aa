set -x
cd /work/main
date -u +%FT%TZ > /tmp/final/started
python src/benchmark.py > /tmp/final/default.jsonl 2>/tmp/final/default.err
python src/benchmark.py --configs=1x24,2x24,3x24 --nonaive --nofused_votes > /tmp/final/nofused_votes.jsonl 2>/dev/null
python src/benchmark.py --configs=1x24,2x24,3x24 --nonaive --nofused_votes --xla > /tmp/final/nofused_votes_xla.jsonl 2>/dev/null
python src/benchmark.py --configs=1x24,3x24 --nonaive --xla > /tmp/final/xla.jsonl 2>/dev/null
cd /tmp/base && ln -sfn /work/shared/data/mnist data 2>/dev/null; python src/benchmark.py --configs=1x24,2x24,3x24,3x64 > /tmp/final/previous_main.jsonl 2>/dev/null
date -u +%FT%TZ > /tmp/final/finished
