#!/usr/bin/env bash
# git under amalloc: 50 commits, log, gc (threaded pack-objects), fsck.
source "$(dirname "$0")/common.sh"
need git

# An isolated git: no user or system configuration, fixed identity and dates
# so the history is identical run to run.
export HOME=$WORK GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=amalloc GIT_AUTHOR_EMAIL=amalloc@example.invalid
export GIT_COMMITTER_NAME=amalloc GIT_COMMITTER_EMAIL=amalloc@example.invalid
export GIT_AUTHOR_DATE='2024-01-01T00:00:00Z' GIT_COMMITTER_DATE='2024-01-01T00:00:00Z'
repo=$WORK/repo
mkdir "$repo" && cd "$repo"

am git init -q -b main . || fail "git init"
for i in $(seq 1 50); do
  # Several files, some growing, so packing finds deltas.
  seq 1 $((i * 40)) >numbers.txt
  printf 'commit %d\n%s\n' "$i" "$(seq -s, "$i" $((i + 200)))" >"file$((i % 7)).txt"
  am git add -A || fail "git add ($i)"
  am git commit -q -m "commit $i" || fail "git commit ($i)"
done

count=$(am git log --oneline | wc -l) || fail "git log"
[[ $count == 50 ]] || fail "git log shows $count commits, expected 50"
am git gc --quiet --aggressive || fail "git gc"
am git fsck --full --strict || fail "git fsck"
[[ $(am git rev-list --count HEAD) == 50 ]] || fail "rev-list count after gc"
# The packed history, read back with the system malloc, must be intact.
git fsck --full --strict 2>/dev/null || fail "repository packed under amalloc fails fsck"
[[ $(git show HEAD:numbers.txt | wc -l) == 2000 ]] || fail "wrong content at HEAD"
echo "commits: $count"
check_amalloc_used 100
echo PASS
