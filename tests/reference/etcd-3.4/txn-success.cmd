etcdctl --endpoints=http://127.0.0.1:22379 txn
exit: 0
stdin:
value("t/a") = "1"

put t/a 10
get t/b

put t/a 100

