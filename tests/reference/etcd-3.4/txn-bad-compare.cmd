etcdctl --endpoints=http://127.0.0.1:22379 txn
exit: 3
stdin:
size("t/a") = "1"



