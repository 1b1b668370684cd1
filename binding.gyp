{
  "targets": [
    {
      "target_name": "poplar_native",
      "sources": ["native/dotstuff.c", "native/crlfsize.c", "native/maildirwrite.c"],
      "cflags": ["-O2"]
    }
  ]
}
