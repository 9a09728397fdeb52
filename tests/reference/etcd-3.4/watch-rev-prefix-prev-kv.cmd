etcdctl --endpoints=http://127.0.0.1:22379 watch /w/ --prefix --rev=51 --prev-kv
exit: 143
