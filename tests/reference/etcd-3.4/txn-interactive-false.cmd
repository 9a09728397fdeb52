etcdctl --endpoints=http://127.0.0.1:22379 txn --interactive=false
exit: 0
stdin:
mod("t/a") > "0"

get t/a


