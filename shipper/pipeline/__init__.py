"""The pipeline, in the order events flow through it.

    feed (shipper/pipeline/feed.py)            a source's input: lines or records, with positions
      -> parse (shipper/parsing, in the agent or a parse worker: shipper/workers.py)
      -> transforms (shipper/pipeline/transforms.py)   the source's drop/sample/set/remove/rename
      -> routing (shipper/pipeline/routing.py)         which sink gets what, in its wire form
      -> channel (shipper/pipeline/channel.py)         one per sink, bounded in bytes, with an
                                                       ordered spill to its disk buffer (spill.py)
      -> driver (shipper/pipeline/driver.py)           batches, retries, splits, partial outcomes,
                                                       adaptive concurrency (concurrency.py),
                                                       dead letters (deadletter.py)
    acks (shipper/pipeline/acks.py) carry "delivered" back to each feed's checkpoint.
"""
