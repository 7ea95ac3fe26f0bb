"""The results tables name machines as people write them, not as the CPU's brand string does."""

from realfake.pipeline.tables import readable_machine


def test_machine_names_lose_trademark_marks():
    assert readable_machine("2-core Intel(R) Xeon(R) Processor CPU") == "2-core Intel Xeon CPU"
    assert readable_machine("2-core AMD EPYC CPU") == "2-core AMD EPYC CPU"
    assert readable_machine(None) is None
