{
  "targets": [
    {
      "target_name": "poplar_native",
      "sources": ["native/dotstuff.c", "native/crlfsize.c"],
      "cflags": ["-O2"]
    }
  ]
}
