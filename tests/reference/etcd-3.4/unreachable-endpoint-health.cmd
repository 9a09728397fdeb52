etcdctl --endpoints=http://127.0.0.1:22383 endpoint health --dial-timeout=1s
exit: 1
