"""pgolf.model.schedule: the record's layer schedules with recurrence off and on."""

from pgolf.model.schedule import layer_schedule


def test_record_layer_schedules():
    off, on = layer_schedule(11, 3, 5, 2, False), layer_schedule(11, 3, 5, 2, True)
    assert off.encoder == (0, 1, 2, 3, 4) and off.decoder == (5, 6, 7, 8, 9, 10)
    assert on.encoder == (0, 1, 2, 3, 4, 5, 3, 4) and on.decoder == (5, 3, 4, 5, 6, 7, 8, 9, 10)
    assert on.num_skips == 8 and layer_schedule(11, 3, 5, 0, True) == off
