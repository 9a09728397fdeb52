etcdctl --endpoints=http://127.0.0.1:22379 lease revoke xyz
exit: 128
