etcdctl --endpoints=http://127.0.0.1:22379 txn
exit: 2
stdin:
lease("t/a") = "0"

get t/a


