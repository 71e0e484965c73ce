"""The app's track list says where the video pipeline saw a person hidden behind another one (issue 11): the
whole-video job on street.avi frames 40-61 (the hugging couple: the detector sees the person behind on 40-47
now and then, then only the one in front), run by the app's own operation (``ops.process_video``) in the in-thread inference worker with the real detector."""

from __future__ import annotations

import numpy as np
import pytest
from app_testkit import RecordingEstimator, street_clip

from app import tracks
from app.jobs import InferenceService
from app.session import Session


@pytest.fixture(scope="module")
def couple_clip(media_dir, tmp_path_factory):
    return street_clip(tmp_path_factory.mktemp("clip") / "couple.avi", range(40, 62))


def test_track_list_shows_occluded_spans(qapp, qtbot, couple_clip):
    from app.widgets.tracks_panel import TracksPanel

    s = Session(inference=InferenceService(estimator_factory=lambda: RecordingEstimator()))
    s.auto_detect = False
    panel = TracksPanel(s.doc)
    qtbot.addWidget(panel)
    panel.show()
    from app.widgets.timeline import Timeline

    timeline = Timeline(s.doc)
    qtbot.addWidget(timeline)
    try:
        s.open_path(couple_clip)
        assert s.process_video()
        qtbot.waitUntil(lambda: not s.video.running, timeout=180000)
        assert sorted(s.doc.occluded) == list(range(22))  # every delivered frame says who is hidden there
        rows = tracks.summary(s.doc)
        hidden = [t for t in rows if t.occluded]
        assert hidden, rows
        t = max(hidden, key=lambda t: sum(e - a + 1 for _, a, e in t.occluded))
        assert sum(e - a + 1 for _, a, e in t.occluded) >= 5, t  # hidden on many frames
        behind, first, last = t.occluded[-1]
        assert t.occluded_text()[-1] == f"occluded behind #{behind}, frames {first + 1}–{last + 1}, no key-points"
        assert t.track_id not in [p.track_id for p in s.doc.persons(last)]  # no person (key-points) there
        assert behind in [p.track_id for p in s.doc.persons(last)]  # the one in front is
        # the panel: an "occluded" column with the span, and on that frame the row says what to do
        s.doc.set_current_frame(last)
        qtbot.waitUntil(lambda: panel.table.rowCount() == len(rows), timeout=2000)
        col = panel.COLUMNS.index("occluded")
        r = [panel.table.item(i, 0).text() for i in range(panel.table.rowCount())].index(f"#{t.track_id}")
        first_all = min(a for b, a, _ in t.occluded if b == behind)
        qtbot.waitUntil(lambda: f"behind #{behind}: {first_all + 1}–{last + 1}" in panel.table.item(r, col).text(),
                        timeout=2000)
        # the timeline's frame label says who is hidden on the shown frame
        assert f"#{t.track_id} behind #{behind}" in timeline.label.text()
        assert "no key-points" in panel.table.item(r, col).toolTip()
        qtbot.waitUntil(lambda: panel.table.item(r, 1).toolTip().startswith(f"hidden behind #{behind} on this frame"),
                        timeout=2000)
    finally:
        s.shutdown()


def test_rerunning_the_whole_video_job_keeps_the_users_proofreading(qapp, qtbot, media_dir, tmp_path):
    """Process all frames, proofread (swap two tracks from frame 4 on, correct a joint on frame
    2), process all frames again: the proofread frames keep the user's persons and track ids; the other
    frames are recomputed (re-tracked and re-estimated)."""
    clip = street_clip(tmp_path / "walk.avi", range(100, 108))
    est = RecordingEstimator()
    s = Session(inference=InferenceService(estimator_factory=lambda: est))
    s.auto_detect = False
    try:
        s.open_path(clip)
        assert s.process_video()
        qtbot.waitUntil(lambda: not s.video.running, timeout=180000)
        doc = s.doc
        first = {f: [p.track_id for p in doc.persons(f)] for f in range(8)}
        both = sorted(set(first[3]) & set(first[7]))
        assert len(both) >= 3
        a, b = both[0], both[1]
        # proofreading: an identity switch fixed from frame 4 on, and a joint moved on frame 2 (a key frame)
        tracks.swap_tracks(doc, a, b, 4)
        uid2 = doc.uids(2)[0]
        p2 = doc.person(uid2)
        doc.replace_person(uid2, doc.with_joint(p2, 0, xy=(float(p2.keypoints[0, 0]) + 7.0,
                                                          float(p2.keypoints[0, 1]))))
        swapped = {f: {p.track_id: p.keypoints.copy() for p in doc.persons(f)} for f in range(4, 8)}
        edited = doc.persons(2)[0]
        unedited_calls = len(est.calls)
        # process all frames again
        assert s.process_video()
        qtbot.waitUntil(lambda: not s.video.running, timeout=180000)
        for f in range(4, 8):
            now = {p.track_id: p.keypoints for p in doc.persons(f)}
            assert set(now) == set(swapped[f]), f
            for t in (a, b):  # the swap holds: the same person (key-points) under the id the user gave
                np.testing.assert_array_equal(now[t], swapped[f][t])
        kept = doc.persons(2)[0]
        assert kept.track_id == edited.track_id and kept.edited[0]
        np.testing.assert_array_equal(kept.keypoints, edited.keypoints)
        assert len(est.calls) > unedited_calls  # the unedited frames were estimated again
        assert [p.track_id for p in doc.persons(0)] == first[0]  # and tracked again the same way
        assert all(r is not None for f in range(8) for r in doc.results(f))
    finally:
        s.shutdown()
