etcdctl --endpoints=http://127.0.0.1:22379 txn
exit: 3
stdin:
mod("t/a" "t/z") > "0"

get t/a


