"""tf_lamb's tests (pytest). `tests.references` holds the independent
references the tests compare against; `tests.support`, shared helpers."""
