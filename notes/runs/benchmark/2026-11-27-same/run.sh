cd /work/main
date -u +%FT%TZ > /tmp/final2/started
python src/benchmark.py > /tmp/final2/default.jsonl 2>/tmp/final2/default.err
python src/benchmark.py --configs=3x24 --nonaive --nofused_votes --xla > /tmp/final2/nofused_votes_xla.jsonl 2>/dev/null
date -u +%FT%TZ > /tmp/final2/finished
