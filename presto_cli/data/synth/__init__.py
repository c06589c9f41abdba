"""A synthetic text-to-music corpus: procedural MIDI -> FluidSynth -> pedalboard -> wav + captions.

Every clip is a short piece in one of :data:`STYLES` (jazz trio, rock, classical piano, ...). The
attributes (style, tempo, key, mode, instruments, mood) are drawn from ``(seed, index)`` only, so a
clip's bytes do not depend on the number of clips or workers. Styles differ in what a small model
can hear: rhythm (swing, four-on-the-floor, one-drop, breakbeat), instruments (General MIDI
programs and drum kits), drums or none, register, note density and the effects chain.

Output layout (``presto data synth --out DIR``)::

    DIR/audio/000000_jazz_trio.wav   mono PCM-16 at the requested rate, exact length
    DIR/manifest.jsonl               {"path", "caption", "labels", "duration", "seed", "split"}
    DIR/styles.json                  {"styles": [{"name", "title", "caption"}]}  (zero-shot labels)
    DIR/synth.json                   the settings that made the corpus (provenance)

Modules: :mod:`.styles` (the styles table), :mod:`.captions`, :mod:`.plan` (attributes from
``(seed, index)``), :mod:`.compose` (procedural MIDI), :mod:`.render` (FluidSynth + pedalboard)
and :mod:`.corpus` (the driver behind ``presto data synth``).

This is [ours]: the paper trains on licensed music that was never released (METHOD.md, section 0),
so presto ships a corpus anyone can rebuild.
"""
from presto_cli.data.synth.captions import HELDOUT_TEMPLATES, TRAIN_TEMPLATES, make_caption
from presto_cli.data.synth.compose import Composer
from presto_cli.data.synth.corpus import synth_clip, synth_corpus
from presto_cli.data.synth.plan import heldout_indices, heldout_moods, plan_clip
from presto_cli.data.synth.render import (INSTALL_HINT, effects_chain, find_fluidsynth, find_soundfont, master,
                                          render_midi)
from presto_cli.data.synth.styles import GM, KEY_NAMES, SCALES, STYLE_BY_NAME, STYLES, Part, Style, style_captions

__all__ = ["STYLES", "STYLE_BY_NAME", "Style", "Part", "GM", "KEY_NAMES", "SCALES", "style_captions",
           "TRAIN_TEMPLATES", "HELDOUT_TEMPLATES", "make_caption", "plan_clip", "heldout_indices",
           "heldout_moods", "Composer", "find_soundfont", "find_fluidsynth", "render_midi", "effects_chain",
           "master", "INSTALL_HINT", "synth_clip", "synth_corpus"]
