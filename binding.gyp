{
  "targets": [
    {
      "target_name": "poplar_native",
      "sources": ["native/dotstuff.c"],
      "cflags": ["-O2"]
    }
  ]
}
