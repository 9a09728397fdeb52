etcdctl --endpoints=http://127.0.0.1:22379 watch /w/b /w/d --rev=51
exit: 143
