etcdctl --endpoints=http://127.0.0.1:22379 txn -w json
exit: 0
stdin:
value("t/a") = "1000"

get t/a
put t/e 5


