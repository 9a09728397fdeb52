etcdctl --endpoints=http://127.0.0.1:22379 watch /w/a --rev=51 -w json
exit: 143
