"""``phonekey drill``: the chaos drills, their Chaos Toolkit experiments and reports."""
