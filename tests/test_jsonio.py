"""Answers joined from parts encoded once are the bytes `dumps` writes for the same value."""

import numpy as np

from worker.jsonio import dumps, encoded, joined_array, joined_object, loads


def test_joined_answers_equal_dumps_of_the_same_value():
    values = np.array([0.0, 1.5, np.nan, np.inf, 2.25e-8], dtype=np.float32)
    barcodes = ["AAAC-1", 'quote"d', "é\n"]
    value = {
        "cells": barcodes,
        "data": [{"geneName": "CD3D", "expression": values, "min": np.float32(0.5)}, {}],
        "notFound": [],
        "mean": None,
    }
    joined = joined_object(
        {
            "cells": encoded(barcodes),
            "data": joined_array(
                [
                    joined_object(
                        {"geneName": "CD3D", "expression": values, "min": np.float32(0.5)}
                    ),
                    joined_object({}),
                ]
            ),
            "notFound": joined_array([]),
            "mean": None,
        }
    )
    assert dumps(joined) == dumps(value)
    assert loads(dumps(joined))["data"][0]["expression"] == [0.0, 1.5, None, None, 2.25e-8]
    # Embedded inside a value that is not joined, an encoded part is written as it is.
    assert dumps({"wrapped": encoded(barcodes)}) == dumps({"wrapped": barcodes})
