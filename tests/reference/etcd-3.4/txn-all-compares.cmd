etcdctl --endpoints=http://127.0.0.1:22379 txn
exit: 0
stdin:
create("t/a") > "0"
mod("t/a") > "0"
version("t/b") = "1"
value("t/b") != "x"

get t/ --prefix


