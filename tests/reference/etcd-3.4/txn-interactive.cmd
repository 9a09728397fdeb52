etcdctl --endpoints=http://127.0.0.1:22379 txn -i
exit: 0
stdin:
version("t/b") = "1"

put t/b 20

get t/b

