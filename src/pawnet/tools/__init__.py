"""Commands around the model rather than in it: `pawnet bench` (`bench`), `pawnet demo`
(`demo`) and `pawnet runs` (`runs`)."""
