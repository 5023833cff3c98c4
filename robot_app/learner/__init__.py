"""The learner side: training runs on simulated tasks now; the online learner service joins in a later issue."""
